"""The health evaluators as declared asset checks, so the Dagster UI shows them on every asset.

One check per evaluator (`libs.common.events.CHECK_NAMES`) for every materializable asset, named
`dagster_check_name(check)` (`ams_freshness`): Dagster identifies a check by its asset and name alone, so a
team's own check called `freshness` stays a different check and never receives our results. The health
service evaluates them from the event streams and reports each result through the webserver's
`/report_asset_check/` endpoint; Dagster itself never computes them. They are declared with one
`multi_asset_check` (one op, subsettable) whose body yields no result: when a run happens to include the
checks, the op only logs where the results come from and succeeds. `blocking=False`, so a check never holds
back or fails a materialization.
"""

from collections.abc import Iterable, Iterator, Sequence

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    AssetKey,
    AssetsDefinition,
    Definitions,
    multi_asset_check,
)

from libs.common.events import CHECK_NAMES, CheckName, dagster_check_name

CHECK_OP_NAME = "ams_health_checks"

DESCRIPTIONS: dict[CheckName, str] = {
    CheckName.EXECUTION: "Last run outcome, consecutive failures and failed materializations "
    "of planned runs.",
    CheckName.VOLUME: "Row count (dagster/row_count) against a robust z-score over its recent history.",
    CheckName.DURATION: "Step duration against its recent history and any configured maximum.",
    CheckName.FRESHNESS: "Time since the last materialization against the freshness policy "
    "or learned cadence.",
    CheckName.DEPENDENCIES: "Upstream assets failed, stale, retired or undeclared.",
    CheckName.SCHEMA: "Columns added, removed or retyped in dagster/column_schema.",
}
if set(DESCRIPTIONS) != set(CHECK_NAMES):  # a new evaluator needs its description here
    raise RuntimeError(
        f"check descriptions {sorted(DESCRIPTIONS)} do not match CHECK_NAMES {sorted(CHECK_NAMES)}"
    )


def check_specs(keys: Iterable[AssetKey], *, skip: Iterable[AssetCheckKey] = ()) -> list[AssetCheckSpec]:
    """One non-blocking spec per evaluator for each asset key (but the check keys in `skip`)."""
    taken = set(skip)
    return [
        AssetCheckSpec(
            name=dagster_check_name(name.value),  # plain strings for Dagster's serialisation
            asset=key,
            description=f"{DESCRIPTIONS[name]} Reported by the health service.",
            blocking=False,
            metadata={"ams/evaluator": name.value, "ams/reported_by": "services.health"},
        )
        for key in sorted(set(keys), key=lambda k: k.to_user_string())
        for name in CHECK_NAMES
        if AssetCheckKey(key, dagster_check_name(name.value)) not in taken
    ]


def materializable_keys(assets: Sequence[object]) -> list[AssetKey]:
    """The keys of the materializable assets among `assets` (checks on external assets are pointless)."""
    keys: list[AssetKey] = []
    for item in assets:
        if isinstance(item, AssetsDefinition) and item.is_materializable:
            keys.extend(item.keys)
    return keys


def build_health_checks(
    keys: Iterable[AssetKey], *, skip: Iterable[AssetCheckKey] = ()
) -> list[AssetsDefinition]:
    """The declared health checks of `keys` (an empty list when there is no asset)."""
    specs = check_specs(keys, skip=skip)
    if not specs:
        return []

    @multi_asset_check(
        specs=specs,
        can_subset=True,
        name=CHECK_OP_NAME,
        description="Declares the health service's checks; results arrive through /report_asset_check/.",
    )
    def ams_health_checks(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
        context.log.info(
            "health checks are evaluated by the health service from the event streams and reported to "
            "Dagster through /report_asset_check/; nothing to compute in this run"
        )
        yield from ()

    return [ams_health_checks]


def with_health_checks(defs: Definitions) -> Definitions:
    """`defs` plus the six health checks declared on every materializable asset (a team's own location).

    One line in the team's definitions module, `defs = with_health_checks(Definitions(...))`, and the
    results the health service reports appear on each asset's Checks tab. Nothing else changes: no op runs
    them, no run is blocked. The team's own checks are left as they are, whatever their names (ours are
    `ams_<check>`, so a check of theirs called `freshness` stays theirs and gets none of our results), and
    definitions that already carry these checks are returned unchanged (applying it twice is harmless).
    Without it the results still reach the CLI, metrics and webhooks; the health service then posts
    nothing to this location's assets.
    """
    graph = defs.resolve_asset_graph()
    existing = set(graph.asset_check_keys)
    keys = sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string())
    checks = build_health_checks(keys, skip=existing)
    if not checks:
        return defs
    return Definitions.merge(defs, Definitions(asset_checks=checks))
