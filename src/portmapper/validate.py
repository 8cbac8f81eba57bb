"""
The one home of the rules for what operators and peers may give: tags.
"""

import re

TAG_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def is_tag(text):
    """True if ``text`` is a tag: 1 to 64 characters from A-Z a-z 0-9 _ . : -."""
    return isinstance(text, str) and TAG_PATTERN.fullmatch(text) is not None
