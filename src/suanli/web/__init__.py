"""The console: what an operator or a tenant sees in a browser, served by ``suanli up``.

It is a client of the API, in the same process: each page asks the API's own routes,
with the signed-in viewer's token, for what it shows. So a page can never show more
than that token may read (a user never sees another tenant's job), and the rules live
in one place. Pages are rendered on the server (Jinja2); htmx refreshes the live parts
and Chart.js draws the charts, both vendored (``static/vendor``) so that the console
works on a machine without internet.
"""

from suanli.web.app import add_console, error_page

__all__ = ["add_console", "error_page"]
