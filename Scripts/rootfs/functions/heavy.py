"""A function whose initialization costs real time, as real functions' imports do.

At import it loads a broad slice of the standard library and builds an in-memory sqlite3
database of 20,000 orders; the handler runs one small query against it.
"""

import datetime
import decimal
import email.message
import email.parser
import hashlib
import json
import re
import sqlite3
import urllib.parse

_DB = sqlite3.connect(":memory:", check_same_thread=False)
_DB.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount TEXT, day TEXT)")
_EPOCH = datetime.date(2026, 1, 1)
_DB.executemany(
    "INSERT INTO orders VALUES (?, ?, ?, ?)",
    (
        (i, f"customer-{i % 500}", str(decimal.Decimal(i % 997) / 4),
         (_EPOCH + datetime.timedelta(days=i % 365)).isoformat())
        for i in range(20000)
    ),
)
_DB.execute("CREATE INDEX orders_customer ON orders (customer)")
_CUSTOMER = re.compile(r"^customer-\d{1,3}$")
_HEADERS = email.parser.Parser().parsestr("From: catalyzer\nSubject: report\n\nbody")


def handler(event):
    customer = event.get("customer", "customer-7")
    if not _CUSTOMER.match(customer):
        raise ValueError(f"not a customer id: {customer!r}")
    count, total = _DB.execute(
        "SELECT COUNT(*), COALESCE(SUM(CAST(amount AS REAL)), 0) FROM orders WHERE customer = ?",
        (customer,),
    ).fetchone()
    query = urllib.parse.urlencode({"customer": customer, "n": count})
    return {
        "customer": customer,
        "orders": count,
        "total": str(decimal.Decimal(total).quantize(decimal.Decimal("0.01"))),
        "query": query,
        "digest": hashlib.sha256(query.encode()).hexdigest()[:16],
        "subject": _HEADERS["Subject"],
        "echo": json.loads(json.dumps(event)),
    }
