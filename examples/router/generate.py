#!/usr/bin/env python3
"""Write labeled.jsonl: synthetic customer-support requests labelled with the target that
should answer them, for `switchyard router train`.

    python3 examples/router/generate.py > examples/router/labeled.jsonl

`local`: short, self-contained questions a small model answers well (order status, password
resets, opening hours, simple how-tos). `premium`: requests that need reasoning, code,
tools, structured output or long context (debugging an integration, comparing contract
terms, multi-step troubleshooting, JSON extraction). Both draw on the same product
vocabulary (orders, accounts, invoices, the API), so the words alone do not give the label
away. Seeded: the same script always writes the same file.
"""
import json
import random

rng = random.Random(31)

PRODUCTS = ["the Pro plan", "the starter kit", "my subscription", "the mobile app",
            "the desktop client", "the team workspace", "the analytics add-on", "the router"]
THINGS = ["order", "invoice", "account", "password", "refund", "delivery", "receipt",
          "subscription", "API key", "export"]
DAYS = ["Monday", "yesterday", "last week", "this morning", "on the 3rd", "two days ago"]
LANGS = ["Python", "JavaScript", "Go", "Java", "Rust", "TypeScript"]
NAMES = ["Alex", "Sam", "Jordan", "Priya", "Chen", "Maria", "Tom", "Aisha"]

LOCAL = [
    "Where is my {thing}? I placed it {day}.",
    "How do I reset my password?",
    "What are your opening hours on {dayname}?",
    "Can I change the email address on my {thing}?",
    "Hi, is {product} available in Canada?",
    "How much does {product} cost per month?",
    "I didn't get a receipt for my {thing}, can you resend it?",
    "Thanks {name}, that fixed it!",
    "How do I cancel {product}?",
    "Do you ship to Germany?",
    "What payment methods do you accept?",
    "Where can I download {product}?",
    "Is there a student discount for {product}?",
    "My {thing} number is {num}. Has it shipped yet?",
    "How long does a refund take?",
    "Can I upgrade {product} to the annual plan?",
    "How do I turn on dark mode in {product}?",
    "Hello, what's the status of my {thing}?",
    "Can you tell me how to log out of {product}?",
    "Is {product} compatible with Windows 11?",
    # Chatty but simple: length alone does not make a request hard.
    "Hi there {name} here, hope your week is going well. I ordered {product} {day} and just wanted to check when the {thing} will arrive, no rush at all, thanks so much for your help!",
    "Hello! Quick one from {name}: I think I typed my email wrong when I signed up for {product} {day}. Could you tell me where in the settings I can change it? Thanks!",
]

PREMIUM = [
    "Our integration with your API started returning 429 errors {day} even though we stay under the documented limit. Here is our retry logic in {lang}:\n```\n{code}\n```\nWhy does it still fail, and how should we restructure the backoff across our three worker processes?",
    "Compare the cancellation terms of {product} and the enterprise agreement we signed: which clauses about data retention and early termination differ, and what would it cost us to switch mid-contract given a {num} seat commitment?",
    "Extract every {thing} number, amount and due date from the following email thread and return them as JSON with fields id, amount_usd, due_date:\n\n{thread}",
    "I have been troubleshooting {product} for hours. Step one, the sync fails with error E{num}; step two, after reinstalling the client it syncs but duplicates files; step three, the admin console shows the device as offline. Walk me through a root-cause analysis and a plan that avoids data loss.",
    "Write a {lang} script that pages through the /v2/{thing}s endpoint, retries on 5xx with jitter, deduplicates records by id and writes a CSV; explain the edge cases around cursor expiry.",
    "We are migrating {num} customer accounts from our legacy billing system. Given the mapping rules below, design the migration order, the rollback plan and the reconciliation checks.\n\n{thread}",
    "Our finance team sees a mismatch between the invoice totals in the dashboard and the export: the export is {num} dollars lower for {day}. Reason about timezone boundaries, prorated upgrades and refunds to explain where the difference could come from.",
    "Draft a reply to this angry customer that acknowledges each of their four complaints, explains our refund policy precisely and proposes a goodwill credit without admitting liability:\n\n{thread}",
    "Why does this {lang} webhook handler verify the signature correctly in staging but reject every event in production?\n```\n{code}\n```",
    # Short but hard: a few words can need real reasoning.
    "Why would the API return 409 on an idempotent retry of a {thing} create?",
    "Is it safe to rotate an API key while {num} webhooks are in flight? Explain the race.",
    "Prove our proration formula double-counts the upgrade day for {product}.",
    "Summarise this support ticket history, identify the unresolved issues, assign each a severity and propose next actions for the engineering team:\n\n{thread}",
]

CODE = [
    "for attempt in range(5):\n    r = client.post(url, json=payload)\n    if r.status_code == 429:\n        time.sleep(2 ** attempt)\n        continue\n    r.raise_for_status()",
    "async function send(evt) {\n  const sig = hmac(secret, JSON.stringify(evt.body));\n  if (sig !== evt.headers['x-signature']) throw new Error('bad sig');\n  return queue.push(evt);\n}",
    "func handle(w http.ResponseWriter, r *http.Request) {\n\tbody, _ := io.ReadAll(r.Body)\n\tif !verify(body, r.Header.Get(\"X-Signature\")) {\n\t\tw.WriteHeader(401)\n\t}\n}",
]

THREAD_LINES = [
    "From {name}: the {thing} {num} was charged twice {day}.",
    "From support: we issued a partial refund for {thing} {num}.",
    "From {name}: still waiting, and the second {thing} is due on the 15th.",
    "From billing: amount outstanding is {num}.00 USD for {product}.",
    "From {name}: I want this escalated, nobody has replied since {day}.",
    "From {name}: the export for {product} is missing rows again.",
]

DAYNAMES = ["Sunday", "Saturday", "public holidays", "weekdays"]


def fill(t):
    thread = ""
    if "{thread}" in t:
        thread = "\n".join(fill(rng.choice(THREAD_LINES)) for _ in range(rng.randint(3, 6)))
    return t.format(
        thing=rng.choice(THINGS), day=rng.choice(DAYS), product=rng.choice(PRODUCTS),
        lang=rng.choice(LANGS), name=rng.choice(NAMES), num=rng.randint(100, 99999),
        dayname=rng.choice(DAYNAMES), code=rng.choice(CODE),
        thread=thread,
    )


def request(text, label):
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": "You are a helpful support assistant for Acme."})
    messages.append({"role": "user", "content": text})
    body = {"model": "support", "messages": messages}
    if label == "premium" and "JSON" in text:
        body["response_format"] = {"type": "json_object"}
    if label == "premium" and rng.random() < 0.25:
        body["tools"] = [{"type": "function", "function": {
            "name": "lookup_" + rng.choice(THINGS).replace(" ", "_"),
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]
    body["label"] = label
    return body


rows = [request(fill(rng.choice(LOCAL)), "local") for _ in range(180)]
rows += [request(fill(rng.choice(PREMIUM)), "premium") for _ in range(140)]
rng.shuffle(rows)
for r in rows:
    print(json.dumps(r, ensure_ascii=False))
