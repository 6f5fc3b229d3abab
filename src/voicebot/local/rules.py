"""A local AWS IoT rules engine that runs the very rule SQL of ``cloud/template.yaml``.

It reads every ``AWS::IoT::TopicRule`` in the SAM template, resolves ``!Sub`` with the topic root, parses the SQL subset
the rules use, subscribes to their FROM filters on the local broker, and invokes the target handler with the event an
IoT rule's Lambda action would deliver (the SELECT's JSON), asynchronously and in parallel as Lambda does.

Supported SQL: ``SELECT *, topic(n) AS x, field AS y FROM 'filter' [WHERE cond]`` where cond is AND/OR/parentheses over
``field = literal`` and ``field <> literal``. Anything else fails at start with a message naming it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from voicebot.messaging import Transport
from voicebot.protocol import QOS_AT_LEAST_ONCE, topic_matches

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], object]


class RuleSqlError(ValueError):
    pass


# --------------------------------------------------------------------------------------------------------------------
# The SAM template (CloudFormation YAML with short-form intrinsics)
# --------------------------------------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    pass


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def resolve_sub(value: Any, params: Mapping[str, str]) -> str:
    """Resolve ``Fn::Sub`` (string or [string, vars]) and plain strings with the given parameters."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        text, local = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
        env = {**params, **local}

        def repl(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in env:
                raise RuleSqlError(f"!Sub variable ${{{key}}} has no local value")
            return str(env[key])

        return re.sub(r"\$\{([A-Za-z0-9_:.]+)\}", repl, text)
    raise RuleSqlError(f"cannot resolve {value!r} locally (only plain strings and !Sub are supported)")


# --------------------------------------------------------------------------------------------------------------------
# SQL subset
# --------------------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><>|!=|=|\(|\)|,|\*)|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)
_KEYWORDS = {"SELECT", "FROM", "WHERE", "AS", "AND", "OR", "TRUE", "FALSE"}


def _tokenize(sql: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    sql = sql.rstrip()
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        if not m or m.end() == pos:
            raise RuleSqlError(f"unsupported SQL at {sql[pos:pos + 20]!r} in: {sql}")
        pos = m.end()
        if m.group("str") is not None:
            tokens.append(("str", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num") is not None:
            num = m.group("num")
            tokens.append(("lit", float(num) if "." in num else int(num)))
        elif m.group("op") is not None:
            tokens.append(("op", m.group("op")))
        else:
            word = m.group("word")
            if word.upper() in ("TRUE", "FALSE"):
                tokens.append(("lit", word.upper() == "TRUE"))
            elif word.upper() in _KEYWORDS:
                tokens.append(("kw", word.upper()))
            else:
                tokens.append(("id", word))
    return tokens


Condition = Callable[[Mapping[str, Any]], bool]


def _lookup(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


_MISSING = object()


@dataclass(frozen=True)
class SelectItem:
    kind: str  # "star" | "topic" | "field"
    source: str | int = ""
    alias: str = ""


@dataclass(frozen=True)
class RuleQuery:
    sql: str
    items: tuple[SelectItem, ...]
    topic_filter: str
    where: Condition

    def matches(self, topic: str, payload: Mapping[str, Any]) -> bool:
        return topic_matches(self.topic_filter, topic) and self.where(payload)

    def select(self, topic: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON the rule's SELECT produces: the event a Lambda action receives."""
        out: dict[str, Any] = {}
        levels = topic.split("/")
        for item in self.items:
            if item.kind == "star":
                out.update(payload)
            elif item.kind == "topic":
                n = int(item.source)
                if 1 <= n <= len(levels):
                    out[item.alias] = levels[n - 1]
            else:
                value = _lookup(payload, str(item.source))
                if value is not _MISSING:
                    out[item.alias] = value
        return out


class _Parser:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.tokens = _tokenize(sql)
        self.i = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str, value: Any = None) -> Any:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            found = "end of statement" if tok is None else repr(tok[1])
            raise RuleSqlError(f"expected {value or kind} but found {found} in: {self.sql}")
        self.i += 1
        return tok[1]

    def accept(self, kind: str, value: Any = None) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == kind and (value is None or tok[1] == value):
            self.i += 1
            return True
        return False

    def parse(self) -> RuleQuery:
        self.take("kw", "SELECT")
        items = [self.item()]
        while self.accept("op", ","):
            items.append(self.item())
        self.take("kw", "FROM")
        topic_filter = self.take("str")
        where: Condition = lambda _payload: True  # noqa: E731
        if self.accept("kw", "WHERE"):
            where = self.expr()
        if self.peek() is not None:
            raise RuleSqlError(f"unsupported SQL after {self.tokens[self.i - 1][1]!r}: {self.peek()[1]!r} in: {self.sql}")
        return RuleQuery(self.sql, tuple(items), topic_filter, where)

    def item(self) -> SelectItem:
        if self.accept("op", "*"):
            return SelectItem("star")
        name = self.take("id")
        if self.accept("op", "("):
            if name.lower() != "topic":
                raise RuleSqlError(f"unsupported SQL function {name}() in: {self.sql} (only topic(n))")
            n = self.take("lit")
            self.take("op", ")")
            self.take("kw", "AS")
            return SelectItem("topic", int(n), self.take("id"))
        alias = self.take("id") if self.accept("kw", "AS") else name.split(".")[-1]
        return SelectItem("field", name, alias)

    def expr(self) -> Condition:
        left = self.term()
        while self.accept("kw", "OR"):
            right = self.term()
            left = (lambda a, b: lambda p: a(p) or b(p))(left, right)
        return left

    def term(self) -> Condition:
        left = self.factor()
        while self.accept("kw", "AND"):
            right = self.factor()
            left = (lambda a, b: lambda p: a(p) and b(p))(left, right)
        return left

    def factor(self) -> Condition:
        if self.accept("op", "("):
            inner = self.expr()
            self.take("op", ")")
            return inner
        name = self.take("id")
        tok = self.peek()
        if tok is None or tok[0] != "op" or tok[1] not in ("=", "<>", "!="):
            raise RuleSqlError(f"unsupported condition on {name} in: {self.sql} (only = and <> comparisons)")
        self.i += 1
        kind, value = self.peek() or ("", None)
        if kind not in ("str", "lit"):
            raise RuleSqlError(f"expected a literal after {name} {tok[1]} in: {self.sql}")
        self.i += 1
        equal = tok[1] == "="

        def cond(payload: Mapping[str, Any]) -> bool:
            got = _lookup(payload, name)
            if got is _MISSING:
                return False  # IoT SQL: a comparison with an undefined field is not true
            return (got == value and type(got) is type(value) or _num_eq(got, value)) == equal

        return cond


def _num_eq(a: Any, b: Any) -> bool:
    numeric = (int, float)
    return (isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool)
            and a == b)


def parse_rule_sql(sql: str) -> RuleQuery:
    return _Parser(sql).parse()


# --------------------------------------------------------------------------------------------------------------------
# Rules from the template
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicRule:
    name: str
    query: RuleQuery
    targets: tuple[str, ...]  # logical ids of the Lambda functions the rule invokes


def load_rules(template_path: str | Path, *, topic_root: str) -> list[TopicRule]:
    template = load_template(template_path)
    rules = []
    for name, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::IoT::TopicRule":
            continue
        payload = resource["Properties"]["TopicRulePayload"]
        if payload.get("RuleDisabled") is True:
            continue
        sql = resolve_sub(payload["Sql"], {"TopicRoot": topic_root})
        targets = []
        for action in payload.get("Actions", []):
            if "Lambda" not in action:
                raise RuleSqlError(f"rule {name}: only Lambda actions run locally, found {list(action)}")
            arn = action["Lambda"]["FunctionArn"]
            if not (isinstance(arn, dict) and "Fn::GetAtt" in arn):
                raise RuleSqlError(f"rule {name}: FunctionArn must be !GetAtt <Function>.Arn to run locally")
            targets.append(arn["Fn::GetAtt"][0])
        try:
            query = parse_rule_sql(sql)
        except RuleSqlError as exc:
            raise RuleSqlError(f"rule {name}: {exc}") from exc
        rules.append(TopicRule(name, query, tuple(targets)))
    if not rules:
        raise RuleSqlError(f"no AWS::IoT::TopicRule in {template_path}")
    return rules


@dataclass
class RulesEngine:
    """Subscribes to every rule's FROM filter and invokes its Lambda handlers in a thread pool (async invoke)."""

    transport: Transport
    rules: list[TopicRule]
    handlers: Mapping[str, Handler]
    max_workers: int = 16
    invocations: deque[tuple[str, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=256))
    """The latest invocations (bounded: the local stack may run for days)."""
    _pool: ThreadPoolExecutor = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: set[Future[Any]] = field(default_factory=set)
    _closed: bool = False

    def __post_init__(self) -> None:
        missing = {t for r in self.rules for t in r.targets} - set(self.handlers)
        if missing:
            raise RuleSqlError(f"no local handler for {sorted(missing)}")
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="rule")

    def start(self) -> RulesEngine:
        for topic_filter in dict.fromkeys(r.query.topic_filter for r in self.rules):
            self.transport.subscribe(topic_filter, QOS_AT_LEAST_ONCE, self.on_message)
        return self

    def on_message(self, topic: str, payload: bytes) -> None:
        if self._closed:
            return
        try:
            obj = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            log.warning("rules: payload on %s is not JSON (or nested too deeply); no rule fires", topic)
            return
        if not isinstance(obj, dict):
            log.warning("rules: payload on %s is not a JSON object; no rule fires", topic)
            return
        for rule in self.rules:
            try:
                if not rule.query.matches(topic, obj):
                    continue
                event = rule.query.select(topic, obj)
            except Exception as exc:  # a payload the SQL cannot evaluate: this rule does not fire, the engine goes on
                log.warning("rules: %s could not evaluate the payload on %s: %s: %s", rule.name, topic,
                            type(exc).__name__, str(exc)[:200])
                continue
            for target in rule.targets:
                with self._lock:
                    if self._closed:
                        return
                    self.invocations.append((target, event))
                    future = self._pool.submit(self._invoke, rule.name, target, event)
                    self._pending.add(future)
                future.add_done_callback(self._pending.discard)

    def _invoke(self, rule: str, target: str, event: dict[str, Any]) -> None:
        try:
            self.handlers[target](event)
        except Exception:  # the rule's error action: log it, keep serving
            log.exception("rules: %s -> %s failed", rule, target)

    def close(self) -> None:
        """Stop taking messages, then let the running invocations finish (they may still publish)."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=False)
