"""Temporary: the v1 phantom under its old import path."""
from meddet.data.phantom.v1 import *  # noqa: F401,F403
from meddet.data.phantom.v1 import _layout  # noqa: F401
