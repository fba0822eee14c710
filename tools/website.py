"""The course as a static website, built with Sphinx and myst-nb from the committed, executed notebooks.

    python tools/website.py build    # write site/ (nothing re-runs: the notebooks' outputs are shown as committed)
    python tools/website.py check    # fast HTML checks of site/: pages, images, internal links, nothing external
    python tools/website.py serve    # preview site/ on http://127.0.0.1:8000

Nothing here is written by hand twice: `build` generates the Sphinx source (conf.py and every page) in a temporary
folder from course.py (pages in course order, titles), notebooks/ (one page per lesson), exercises/ (each
exercise's "Task:" line, read with ast) and README.md (the landing page from its opening part, and its section on
what is tested). Sphinx and its extensions (requirements-docs.txt) are imported only by `build`, in its own process;
the rest is the standard library, so the tests run it in any environment.
"""

from __future__ import annotations

import argparse
import ast
import html.parser
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course import LESSONS  # noqa: E402  (the repo root is not a package)
from exercises import catalog  # noqa: E402  (standard library only, like this file)

SITE_DIR = ROOT / "site"
LESSONS_DIR = "lessons"  # lesson pages live at site/lessons/<module>.html
TESTED_SECTION = "## What is tested, on which versions"  # README section that becomes a page of its own
EXERCISES_SECTION = "## Exercises"  # README section whose prose heads the exercises page
BUILD_TIMEOUT_S = 300  # Sphinx takes well under a minute here; a build that runs this long has hung
SERVE_PORT = 8000
IMAGE_OPTIONS = {"width": "100%"}  # a figure output fills the column and links to its full-size PNG

# Sphinx configuration of the generated source. Warnings are errors (sphinx-build -W). Nothing is loaded from the
# network: the theme ships its fonts and icons, myst-nb shows the committed outputs (execution "off"), no page has
# math (so Sphinx adds no MathJax from its CDN; `check` fails if one ever does), and search summaries are off
# because they fetch pages, which a browser refuses under file://.
CONF_PY = """\
project = {project!r}
html_title = {project!r}
extensions = ["myst_nb", "sphinx_copybutton", "sphinx.ext.githubpages"]
nb_execution_mode = "off"
nb_merge_streams = True
nb_render_image_options = {image_options!r}  # a figure fills the column and links to its full-size PNG
myst_heading_anchors = 3
exclude_patterns = ["downloads/**"]
html_theme = "sphinx_book_theme"
html_theme_options = {{
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "home_page_in_toc": True,
    "navbar_persistent": [],  # one search box (the sidebar's), not a second one in a header bar
    "footer_content_items": [],  # no author or copyright line to show
}}
html_copy_source = False
html_show_sourcelink = False
html_show_search_summary = False
html_last_updated_fmt = None
html_favicon = "favicon.svg"  # without one, every browser asks the server for /favicon.ico and gets a 404
html_context = {{"default_mode": "light"}}  # the figures are drawn on white; the reader may switch
"""

# A flame-orange dot: the site's icon, so that no browser goes looking for one.
FAVICON_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
               '<circle cx="8" cy="8" r="7" fill="#ee4c2c"/></svg>\n')


@dataclass(frozen=True)
class Exercise:
    name: str  # the function or class to write
    task: str  # its docstring's "Task:" paragraph, on one line, without the "Task:"


def exercises(module: str, root: Path = ROOT) -> list[Exercise]:
    """The exercises of one lesson in file order: every top-level function or class whose docstring starts
    with "Task:" in exercises/<module>.py (read with ast, not imported: no torch needed)."""
    tree = ast.parse((root / "exercises" / f"{module}.py").read_text(encoding="utf-8"))
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node) or ""
            if doc.startswith("Task:"):
                paragraph = doc.split("\n\n", 1)[0].removeprefix("Task:")
                found.append(Exercise(node.name, " ".join(paragraph.split())))
    return found


def readme_parts(readme: str) -> tuple[str, str]:
    """(course name, front matter) of README.md: its `# ` heading, and the prose before its first `## ` section."""
    title, rest = readme.split("\n", 1)
    if not title.startswith("# "):
        raise ValueError(f"README.md starts with {title!r}, expected its '# ' heading")
    return title[2:].strip(), rest.split("\n## ", 1)[0]


def readme_section(readme: str, heading: str) -> str:
    """The text under one `## ` heading of README.md, up to the next `## ` heading."""
    marker = "\n" + heading + "\n"
    if marker not in readme:
        raise ValueError(f"README.md has no section {heading!r}")
    return readme.split(marker, 1)[1].split("\n## ", 1)[0].strip()


def without_repo_links(markdown: str) -> str:
    """README prose for the site: paragraphs of in-page links (the README's own contents line) are dropped and
    every other relative link keeps its text only, because the site has neither the README's anchors nor the
    repository's files. Links to web pages stay."""
    paragraphs = [p for p in re.split(r"\n\s*\n", markdown.strip()) if "](#" not in p]
    text = "\n\n".join(paragraphs)
    return re.sub(r"\[([^\]]+)\]\((?!https?://)[^)]*\)", r"\1", text)


def without_tables(markdown: str) -> str:
    """Markdown without its tables (the site lists the exercises itself, from the files)."""
    return "\n".join(line for line in markdown.splitlines() if not line.lstrip().startswith("|"))


def exercise_list(module: str, download_prefix: str, root: Path = ROOT) -> str:
    """A markdown list: each exercise's name, level, section and task, after a download link to its file."""
    lines = [f"In {{download}}`exercises/{module}.py <{download_prefix}exercises/{module}.py>` "
             f"(solutions: {{download}}`exercises/solutions/{module}.py "
             f"<{download_prefix}exercises/solutions/{module}.py>`):", ""]
    for exercise in exercises(module, root):
        record = catalog.BY_NAME[exercise.name]  # level and section, as `make exercises` shows them
        lines.append(f"- **`{exercise.name}`** {record.stars} ({record.section}): {exercise.task}")
    return "\n".join(lines)


def lesson_page(module: str, title: str, root: Path = ROOT) -> dict:
    """The notebook of one lesson as it is committed, with a title cell (links to its script, notebook and
    exercises) before its first cell and its exercises as a last section."""
    notebook = json.loads((root / "notebooks" / f"{module}.ipynb").read_text(encoding="utf-8"))
    head = (f"# {title}\n\n"
            f"{{download}}`Script: {module}.py <../downloads/{module}.py>` · "
            f"{{download}}`Notebook: {module}.ipynb <../downloads/notebooks/{module}.ipynb>` · "
            f"[Exercises](#{module}-exercises)\n\n"
            "Every output and figure below is what the committed notebook printed and drew when it ran; "
            "run the script or the notebook to make your own.")
    tail = (f"({module}-exercises)=\n## Exercises\n\n{exercise_list(module, '../downloads/', root)}\n\n"
            f"How to check your answers, and the other lessons' exercises: "
            f"{{ref}}`the exercises page <exercises-{module}>`.")
    for cell in notebook["cells"]:
        if any("image/png" in output.get("data", {}) for output in cell.get("outputs", [])):
            cell["metadata"]["mystnb"] = {"image": {**IMAGE_OPTIONS, "alt": figure_alt_text(cell)}}
    notebook["cells"] = [_markdown_cell(f"site-title-{module}", head), *notebook["cells"],
                         _markdown_cell(f"site-exercises-{module}", tail)]
    return notebook


def figure_alt_text(cell: dict) -> str:
    """A figure's alt text from the file the cell saved it to ("saved ../plots/autograd_graph.png")."""
    printed = "".join("".join(output.get("text", "")) for output in cell["outputs"])
    return ", ".join(figure_alt_text_of(name) for name in re.findall(r"saved \S*?(\w+\.png)", printed)) or "figure"


def figure_alt_text_of(filename: str) -> str:
    """"autograd_graph.png" -> "autograd graph": how a lesson's figure is named on its page."""
    return filename.removesuffix(".png").replace("_", " ")


def _markdown_cell(cell_id: str, source: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": source}


def index_page(readme: str) -> str:
    project, front = readme_parts(readme)
    pages = "\n".join(f"{LESSONS_DIR}/{lesson.module}" for lesson in LESSONS)
    return (f"# {project}\n\n{without_repo_links(front)}\n\n"
            "This site shows every lesson as its committed notebook: prose, code, printed output and figures, "
            "from a full run on the CPU. Use the search box to find a function or an idea across the course.\n\n"
            f"```{{toctree}}\n:caption: Lessons\n:maxdepth: 1\n\n{pages}\n```\n\n"
            "```{toctree}\n:caption: Practice and testing\n:maxdepth: 1\n\nexercises\ntested\n```\n")


def exercises_page(readme: str, root: Path = ROOT) -> str:
    parts = ["# Exercises", without_repo_links(without_tables(readme_section(readme, EXERCISES_SECTION)))]
    for lesson in LESSONS:
        parts += [f"(exercises-{lesson.module})=\n## {lesson.title}",
                  f"Lesson page: {{doc}}`{LESSONS_DIR}/{lesson.module}`.",
                  exercise_list(lesson.module, "downloads/", root)]
    return "\n\n".join(parts) + "\n"


def tested_page(readme: str) -> str:
    return f"# {TESTED_SECTION[3:]}\n\n{without_repo_links(readme_section(readme, TESTED_SECTION))}\n"


def page_order() -> list[str]:
    """Documents in reading order (the order of the toctrees, so of the previous/next links)."""
    return ["index", *(f"{LESSONS_DIR}/{lesson.module}" for lesson in LESSONS), "exercises", "tested"]


def write_source(source: Path, root: Path = ROOT) -> None:
    """The Sphinx source of the whole site in `source`: conf.py, the pages, and the files they offer as downloads."""
    readme = (root / "README.md").read_text(encoding="utf-8")
    project = readme_parts(readme)[0]
    (source / LESSONS_DIR).mkdir(parents=True)
    (source / "conf.py").write_text(CONF_PY.format(project=project, image_options=IMAGE_OPTIONS), encoding="utf-8")
    (source / "favicon.svg").write_text(FAVICON_SVG, encoding="utf-8")
    (source / "index.md").write_text(index_page(readme), encoding="utf-8")
    (source / "exercises.md").write_text(exercises_page(readme, root), encoding="utf-8")
    (source / "tested.md").write_text(tested_page(readme), encoding="utf-8")
    downloads = source / "downloads"
    for sub in ("notebooks", "exercises/solutions"):
        (downloads / sub).mkdir(parents=True)
    for lesson in LESSONS:
        page = lesson_page(lesson.module, lesson.title, root)
        (source / LESSONS_DIR / f"{lesson.module}.ipynb").write_text(json.dumps(page), encoding="utf-8")
        for path in (lesson.script, f"notebooks/{lesson.module}.ipynb", f"exercises/{lesson.module}.py",
                     f"exercises/solutions/{lesson.module}.py"):
            shutil.copyfile(root / path, downloads / path)


def build(site: Path = SITE_DIR, keep_source: Path | None = None) -> int:
    """Generate the source, run sphinx-build (warnings are errors) into `site`, then `check` it."""
    if site.exists():
        if any(site.iterdir()) and not (site / ".buildinfo").exists():
            raise SystemExit(f"{site} exists and is not a site this tool built; not removing it")
        shutil.rmtree(site)
    with tempfile.TemporaryDirectory(prefix="course-site-") as scratch:
        source = keep_source or Path(scratch) / "source"
        if keep_source and keep_source.exists():
            shutil.rmtree(keep_source)
        write_source(source)
        # Into the scratch folder first: myst-nb writes the notebooks' images next to the output folder
        # (<output>/../jupyter_execute), which must not be the repository.
        html = Path(scratch) / "build" / "html"
        command = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-E",
                   "-d", str(Path(scratch) / "build" / "doctrees"), str(source), str(html)]
        try:
            done = subprocess.run(command, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"sphinx-build ran longer than {BUILD_TIMEOUT_S} s; stopped", file=sys.stderr)
            return 1
        if done.returncode == 0:
            shutil.move(html, site)
    if done.returncode != 0:
        print(f"sphinx-build failed (exit code {done.returncode}); its messages are above", file=sys.stderr)
        return done.returncode
    problems = check(site)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        size = sum(path.stat().st_size for path in site.rglob("*") if path.is_file()) / 1e6
        print(f"wrote {site.relative_to(ROOT) if site.is_relative_to(ROOT) else site}/ ({size:.1f} MB): "
              f"open {site / 'index.html'} or run `make serve`")
    return 1 if problems else 0


# ---------------------------------------------------------------------------------------------------------------
# Checks on the built HTML (standard library only).

# <link rel=...> values that name another page rather than load something into this one.
NAVIGATION_RELS = {"canonical", "alternate", "prev", "next", "index", "search", "author", "license", "help",
                   "first", "last", "up", "top", "bookmark", "external", "nofollow", "noopener", "noreferrer"}
# Elements whose src (or data, poster) the browser loads.
LOADING_ATTRIBUTES = {"src", "srcset", "data", "poster"}


@dataclass
class PageLinks:
    ids: set[str] = field(default_factory=set)  # every id (and <a name>) in the page: link targets
    loads: list[str] = field(default_factory=list)  # URLs the browser fetches to show the page
    links: list[str] = field(default_factory=list)  # URLs the reader can follow (<a href>, navigation <link>)
    images: list[str] = field(default_factory=list)  # <img src>
    image_alts: list[str] = field(default_factory=list)  # <img alt>
    h1: list[str] = field(default_factory=list)  # the text of each <h1>


class _PageParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = PageLinks()
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name in ("id",):
            if values.get(name):
                self.page.ids.add(values[name])
        if tag == "a" and values.get("name"):
            self.page.ids.add(values["name"])
        if tag == "h1":
            self._in_h1 = True
            self.page.h1.append("")
        for name in LOADING_ATTRIBUTES & values.keys():
            urls = [part.split()[0] for part in values[name].split(",") if part.strip()] if name == "srcset" \
                else [values[name]]
            self.page.loads += urls
            if tag == "img" and name == "src":
                self.page.images.append(values[name])
                self.page.image_alts.append(values.get("alt", ""))
        if "href" in values:
            if tag == "link" and not (set(values.get("rel", "").lower().split()) <= NAVIGATION_RELS):
                self.page.loads.append(values["href"])
            else:
                self.page.links.append(values["href"])
        if "style" in values:
            self.page.loads += css_urls(values["style"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data: str) -> None:
        if self._in_h1:
            self.page.h1[-1] += data


def css_urls(css: str) -> list[str]:
    """The url(...) and @import targets in a style sheet or style attribute."""
    urls = re.findall(r"url\(\s*['\"]?([^'\")]+?)['\"]?\s*\)", css)
    return urls + re.findall(r"@import\s+['\"]([^'\"]+)['\"]", css)


def parse_page(text: str) -> PageLinks:
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    return parser.page


def is_external(url: str) -> bool:
    """A URL the browser would fetch from the network (not a file of the site, a data: URL or a fragment)."""
    parts = urlsplit(url.strip())
    return url.strip().startswith("//") or parts.scheme.lower() in {"http", "https", "ftp", "ws", "wss"}


def _target(page: Path, url: str, site: Path) -> tuple[Path | None, str]:
    """(the file a relative URL names, its fragment); None for URLs that name no file of the site."""
    parts = urlsplit(url.strip())
    if parts.scheme or url.strip().startswith("//"):
        return None, ""
    if not parts.path:
        return page, unquote(parts.fragment)
    path = (site / unquote(parts.path).lstrip("/")) if parts.path.startswith("/") else page.parent / unquote(parts.path)
    if path.is_dir():
        path = path / "index.html"
    return path, unquote(parts.fragment)


def check(site: Path = SITE_DIR) -> list[str]:
    """Problems with the built site, one line each: a lesson page missing or without its figures, an image or
    internal link that names no file, an anchor that is not on its page, anything loaded from the network."""
    problems = []
    for lesson in LESSONS:
        path = site / LESSONS_DIR / f"{lesson.module}.html"
        if not path.is_file():
            problems.append(f"{path.relative_to(site)}: missing (lesson {lesson.module})")
            continue
        page = parse_page(path.read_text(encoding="utf-8"))
        if lesson.title not in [" ".join(h.split()).rstrip("#").strip() for h in page.h1]:
            problems.append(f"{path.relative_to(site)}: no <h1> with the lesson's title from course.py")
        missing = [name for name in lesson.figures if figure_alt_text_of(name) not in page.image_alts]
        if missing:
            problems.append(f"{path.relative_to(site)}: no image of {', '.join(missing)} (the lesson's figures)")
    pages = {path: parse_page(path.read_text(encoding="utf-8")) for path in sorted(site.rglob("*.html"))
             if "_static" not in path.relative_to(site).parts}  # the themes copy their page templates there
    for path, page in pages.items():
        name = path.relative_to(site)
        for url in page.loads:
            if is_external(url):
                problems.append(f"{name}: loads {url} from the network")
        for url in page.loads + page.links:
            if is_external(url) or urlsplit(url.strip()).scheme:  # web links are fine to follow; mailto: etc.
                continue
            target, fragment = _target(path, url, site)
            if target is None:
                continue
            if not target.is_file():
                problems.append(f"{name}: {url} names no file of the site")
            elif fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse_page(target.read_text(encoding="utf-8")).ids
                if fragment not in ids:
                    problems.append(f"{name}: {url}: no #{fragment} on {target.relative_to(site)}")
    for path in sorted(site.rglob("*.css")):
        for url in css_urls(path.read_text(encoding="utf-8", errors="replace")):
            if is_external(url):
                problems.append(f"{path.relative_to(site)}: loads {url} from the network")
            elif not url.startswith(("data:", "#")):
                target = path.parent / unquote(urlsplit(url).path)
                if not target.is_file():
                    problems.append(f"{path.relative_to(site)}: {url} names no file of the site")
    return problems


def serve(site: Path = SITE_DIR, port: int = SERVE_PORT) -> int:
    if not (site / "index.html").is_file():
        print(f"{site} has no index.html: run `make site` first", file=sys.stderr)
        return 2
    print(f"serving {site} on http://127.0.0.1:{port}/ (Ctrl-C stops)", flush=True)
    try:
        return subprocess.run([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(site),
                               str(port)]).returncode
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "check", "serve"])
    parser.add_argument("--site", type=Path, default=SITE_DIR, help="the site folder (default: site/)")
    parser.add_argument("--port", type=int, default=SERVE_PORT, help="serve: the port on 127.0.0.1")
    parser.add_argument("--keep-source", type=Path, help="build: write the generated Sphinx source here, kept")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    if args.command == "build":
        return build(site, args.keep_source.resolve() if args.keep_source else None)
    if args.command == "serve":
        return serve(site, args.port)
    problems = check(site)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems in {site}" if problems else
          f"{site}: {len(LESSONS)} lesson pages with their figures; every image, style sheet, script and internal "
          "link resolves; nothing loaded from the network")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
