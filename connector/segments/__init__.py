"""Segments (DESIGN.md section 9): criteria grammar, SQL compiler, materialised membership, pre-built segments."""

from .compile import compile_criteria
from .criteria import Criteria, parse
from .membership import Evaluation, contacts_of, evaluate, evaluate_all, refresh_contacts
from .prebuilt import PREBUILT, install_prebuilt

__all__ = [
    "PREBUILT",
    "Criteria",
    "Evaluation",
    "compile_criteria",
    "contacts_of",
    "evaluate",
    "evaluate_all",
    "install_prebuilt",
    "parse",
    "refresh_contacts",
]
