"""Synthetic sagittal cervical-spine phantoms; :mod:`meddet.data.synth` is the public entry.

Modules: ``_common`` (labels, disc findings, drawing primitives shared by every phantom),
``geometry`` (the curved spine frame), ``model`` (cases and how they are drawn), ``render``
(anatomy and acquisition) for the default phantom; ``v1`` the first phantom, kept so that
results made with it can be reproduced.
"""
