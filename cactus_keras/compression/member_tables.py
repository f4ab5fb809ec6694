"""Members of the compression set from plain tables (TOML, JSON, the CLI's `--member`).

A table is `{"kind": KIND, **settings}`, the settings being the member's `__init__`
arguments (`get_config()` keys). `members_from_tables` builds a whole set, naming the
members that have no `name`:

* an unnamed member takes its class's default name (`pruned`, `quantized`, ...) when no
  other member of the set would take the same one;
* otherwise each unnamed member sharing it gets a suffix from its settings: its bits
  (`quantized8`, `quantized4`), else its pruning method (`pruned_global_l1`,
  `pruned_global_l2_structured`), else its position in the set (`pruned_3`);
* a name that is still shared is an error that asks for `name`.

Example:

```python
members = cactus_keras.compression.members_from_tables([
    {"kind": "pruning", "ratio": [0.5, 0.95], "pruning_method": "global_l1"},
    {"kind": "pruning", "ratio": [0.1, 0.6], "pruning_method": "global_l2_structured"},
    {"kind": "awp_quantization", "bits": 8},
    {"kind": "awp_quantization", "bits": 4},
])
[m.name for m in members]
# ['pruned_global_l1', 'pruned_global_l2_structured', 'quantized8', 'quantized4']
```
"""

from __future__ import annotations

import inspect

from cactus_keras.compression.member import check_members, member_class, member_kinds


def _settings_of(cls):
    """The settings a table of `cls` may give, and the default name (None: unknown)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        names = None  # a member taking **kwargs accepts anything
    else:
        names = [name for name, p in parameters.items()
                 if name != "self" and p.kind != p.VAR_POSITIONAL]
    default = parameters.get("name")
    default = default.default if default is not None and default.default is not default.empty else None
    return names, default


def _check_table(table, label):
    if not isinstance(table, dict):
        raise TypeError(
            f"{label} must be a table such as {{kind = \"pruning\", ratio = [0.5, 0.95]}}, "
            f"got {table!r}."
        )
    kind = table.get("kind")
    cls = member_class(kind)
    if cls is None:
        raise ValueError(
            f"{label}: unknown compression member kind {kind!r}; expected one of "
            f"{', '.join(member_kinds())}."
        )
    settings = {k: v for k, v in table.items() if k != "kind"}
    allowed, default_name = _settings_of(cls)
    unknown = sorted(set(settings) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ValueError(
            f"{label}: unknown setting(s) {', '.join(unknown)} for kind {kind!r}; its "
            f"settings are {', '.join(allowed)}."
        )
    return cls, settings, default_name or kind


def _suffixed(name, settings, position):
    if "bits" in settings:
        return f"{name}{settings['bits']}"
    if "pruning_method" in settings:
        return f"{name}_{settings['pruning_method']}"
    return f"{name}_{position + 1}"


def members_from_tables(tables, key="compression", labels=None):
    """The members of a set from a list of tables, named by the module's rule.

    Errors name the table: `labels[i]` if given, else `` `key`[i] ``, then say what is
    wrong with it (`ValueError` or `TypeError`, one line).

    Example:

    ```python
    from cactus_keras.compression import members_from_tables

    members = members_from_tables([
        {"kind": "pruning", "ratio": [0.5, 0.95], "pruning_method": "global_l1"},
        {"kind": "awp_quantization", "bits": 8}])
    model = cactus_keras.CactusModel(net, epsilon=0.1, compression=members)
    print([m.name for m in members])
    ```
    """
    if not isinstance(tables, (list, tuple)):
        raise TypeError(f"`{key}` must be a list of member tables, got {tables!r}.")
    labels = list(labels) if labels is not None else [f"`{key}`[{i}]" for i in range(len(tables))]
    checked = [_check_table(t, label) for t, label in zip(tables, labels)]
    # Settings with the class defaults filled in, so that `ratio` left out still names
    # the member by the method it defaults to.
    filled = []
    for cls, settings, _ in checked:
        defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                    if p.default is not p.empty}
        filled.append({**defaults, **settings})
    defaults = [default for _, settings, default in checked if "name" not in settings]
    members = []
    for position, ((cls, settings, default), full, label) in enumerate(zip(checked, filled, labels)):
        if "name" not in settings:
            shared = defaults.count(default) > 1 or any(
                s.get("name") == default for _, s, _ in checked)
            settings = {**settings, "name": _suffixed(default, full, position) if shared else default}
        try:
            members.append(cls.from_config(settings))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{label} (kind {cls.kind!r}): {exc}") from None
    names = [n for m in members for n in m.names()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"`{key}`: the members' names must be distinct, and {', '.join(map(repr, repeated))} "
            f"is given more than once (names: {', '.join(names)}); give each member its "
            "own `name`."
        )
    return check_members(members)


def member_table(member):
    """The table of a member: `{"kind": ..., **member.get_config()}` (plain values)."""
    if member.kind is None:
        raise ValueError(
            f"{type(member).__name__} has no kind: register it with "
            "@cactus_keras.compression.register_member(KIND) so that configs can name it."
        )
    return {"kind": member.kind, **member.get_config()}
