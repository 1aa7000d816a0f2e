import hashlib
from jinja2 import Template

page = Template("<h1>Hello {{ username }}</h1><ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>")


def handler(event, context):
    html = page.render(username=event["username"], items=[i * i for i in range(event["items"])])
    return {"length": len(html), "sha256": hashlib.sha256(html.encode()).hexdigest(), "head": html[:30]}
