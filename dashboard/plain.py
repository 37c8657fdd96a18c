"""Stored text (names, errors, hosts, versions: from this machine's runs or, through `harness
ingest`, anyone's) shown as text. Streamlit renders headers, captions, alerts and metric labels
as Markdown, so a name like `![x](http://host/p.png)` would make every viewer's browser fetch
that URL: every stored value reaches those elements through `escape`."""
from __future__ import annotations

import re

# CommonMark lets a backslash escape any ASCII punctuation character, which then renders as
# itself; that covers links, images, HTML, emphasis, code spans, and Streamlit's own :color[...]
# directives, :emoji: short codes and $math$.
_PUNCTUATION = re.compile(r"""([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])""")


def escape(value: object) -> str:
    """`value` as text that Markdown shows exactly as it is."""
    return _PUNCTUATION.sub(r"\\\1", str(value))
