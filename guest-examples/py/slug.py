"""slug: the input string `title` as a URL slug, through the PyPI package
python-slugify (pinned in requirements.txt with its dependency
text-unidecode; both pure Python)."""
# componentize-py puts into the component the modules imported while it
# builds; python-slugify imports text_unidecode only when a title is not
# ASCII, so import it here.
import text_unidecode  # noqa: F401
from slugify import slugify

import workhost


@workhost.handler
def execute(name, data):
    title = data.get("title")
    if not isinstance(title, str):
        raise workhost.Fail("give the input string `title`")
    return {"slug": slugify(title)}
