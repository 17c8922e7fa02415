"""Sixteen small web pages about programming, four topics of four pages, named
as saved pages are (host.path.html): the corpus `sftmill init` must propose
topic subdomains for — never file names or page titles."""

from pathlib import Path

TOPICS = {
    "django": [
        "Django maps each URL pattern to a view function that returns an HTTP response.",
        "Models in Django describe database tables, and migrations change the schema safely.",
        "The Django ORM builds SQL queries from querysets that are evaluated lazily.",
        "Templates render context variables into HTML with filters and template inheritance.",
        "Django forms validate user input and show errors next to each field.",
        "Middleware wraps every request and response, for sessions, security headers and caching.",
        "The admin site lets staff edit model instances without writing views.",
        "Class-based views reuse behaviour for listing, creating and updating objects.",
    ],
    "packaging": [
        "A pyproject.toml file declares the build backend and the project's metadata.",
        "Wheels are built distributions that pip installs without running a build step.",
        "Virtual environments keep each project's installed packages apart from the system.",
        "Version specifiers such as >=3.2,<4 tell pip which releases satisfy a dependency.",
        "Publishing to PyPI uploads the sdist and the wheels with twine or a trusted publisher.",
        "Entry points in the metadata install console scripts that call a function.",
        "Lock files pin every transitive dependency so installs repeat exactly.",
        "Editable installs point the environment at the source tree while you develop.",
    ],
    "testing": [
        "Pytest collects functions whose names start with test and reports failing asserts.",
        "Fixtures provide each test with the resources it needs and clean them up afterwards.",
        "Parametrised tests run the same assertions over a table of inputs.",
        "Mocks replace slow or external collaborators so a unit test stays fast and isolated.",
        "Coverage reports show which lines and branches the test suite executed.",
        "Property-based testing generates many random inputs and shrinks a failing example.",
        "Continuous integration runs the test suite on every push and pull request.",
        "A flaky test passes and fails without a code change, often because of timing.",
    ],
    "git": [
        "A git commit records a snapshot of the tracked files with its author and message.",
        "Branches are movable pointers, so creating one costs almost nothing.",
        "Merging joins two histories, while rebasing replays commits on a new base.",
        "The staging area lets you choose which changes go into the next commit.",
        "Remote repositories are synchronised with fetch, pull and push.",
        "Conflicts appear when two branches change the same lines differently.",
        "Tags mark releases, and annotated tags carry a message and a signature.",
        "Interactive rebase can squash, reorder or reword commits before sharing them.",
    ],
}
HOSTS = ["caktusgroup.com", "realpython.com", "gregoryszorc.com", "blog.example.org"]


def write_pages(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pages = []
    for t, (topic, sentences) in enumerate(TOPICS.items()):
        for i, host in enumerate(HOSTS):
            chosen = sentences[i:] + sentences[:i]
            title = f"{host}: notes on {topic}, part {i + 1}"
            body = "".join(f"<p>{s} {chosen[(k + 3) % 8]}</p>" for k, s in enumerate(chosen[:6]))
            path = folder / f"{host}.{topic}.{i}.html"
            path.write_text(f"<html><head><title>{title}</title></head><body><h1>{title}</h1>"
                            f"{body}</body></html>", encoding="utf-8")
            pages.append(path)
    return pages
