"""The global limit, held by construction: N admitters of one entitlement never admit more than the limit.

The invariant (issue 12): summed over all admitters, what is admitted over any window ``[t0, t1]``
is at most ``L * (t1 - t0)`` plus one burst depth ``D = L * window`` (the levels at ``t0``), plus
one request's overshoot per admitter (a request larger than the level is admitted from a full
bucket and repaid), plus the depth of any bucket that starts full inside the window (once per
bucket, at its first positive share: an admitter's start).

Nothing is mocked: each admitter is the capacity model's own ``PoolLive`` and ``EntitlementLive``,
admitting with ``decide``; the pipeline's rule is ``capacity.split.hold_raises`` and the admitter's
``capacity.split.share_for``, applied as ``admitter.kafka.state_follower`` applies them
(``PoolLive.apply_share``). Hypothesis chooses the shares of every record (any split, any subset
of admitters listed, records that list nobody), when each admitter applies each record (any lag,
as long as every admitter applies record k before any applies k+2: the spread the hold covers),
and the request sizes. The bound is computed here from those draws, not from the code under test.

Each rule reverted makes this module fail (tried on 2e70eb9, failures quoted in the issue's note):
the old ``TokenBucket.reconfigure`` (a floor at minus the depth forgave debt that the next raise
handed back) and the whole-limit semantics for shares both fail the property test and
``test_a_share_moved_from_an_admitter_that_spent_its_bucket_is_not_admitted_twice``; an unlisted
admitter taking ``limit / n`` fails the property test; publishing targets without
``hold_raises`` fails ``test_a_share_swapped_every_tick_while_one_admitter_lags_stays_within_the_limit``
(the random search does not reliably find that one: it needs the admitter that loses a share to
apply every record late, and the one that gains it early). The property test is derandomized, so
CI runs the same 200 examples every time.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capacity.admission import Verdict, decide
from capacity.cost import RequestCost
from capacity.live import PoolLive
from capacity.split import NOTHING, hold_raises, share_for
from schemas.specs import Triple
from tests.factories import ent, pool

LIMIT = 1000.0  # weighted tokens/s, the entitlement's global limit
WINDOW = 10.0  # burst window (the default): one depth is 10,000
KV = CONC = 1e9  # the other two dimensions never bind here
TOTAL: Triple = (LIMIT, KV, CONC)
INTERVAL = 1.0  # a record per second
STEP = 0.05  # every admitter tries a request this often
RECORDS = 12


@dataclass
class Admitter:
    name: str
    live: PoolLive
    applied: int = 0  # records applied so far
    primed: bool = False  # had a positive share (its bucket filled, once)


def shares_of(listed: list[int], weights: list[int], spend: float, names: list[str]) -> dict[str, Triple]:
    """A record's targets: the listed admitters split ``spend`` of the limit by ``weights``."""
    if not listed:
        return {}
    total = sum(weights) or 1
    out = {}
    for i, w in zip(listed, weights, strict=True):
        f = spend * w / total
        out[names[i]] = (LIMIT * f, KV * f, CONC * f)
    return out


# A record's shape: which admitters it lists (a mask), their weights, how much of the limit the
# pipeline hands out, and for how many records in a row it stays (shares move, then settle).
segments = st.lists(
    st.tuples(
        st.lists(st.booleans(), min_size=4, max_size=4),
        st.lists(st.integers(0, 10), min_size=4, max_size=4),
        st.sampled_from([1.0, 1.0, 0.5]),
        st.integers(1, 5),
    ),
    min_size=1, max_size=RECORDS,
)


def records_of(drawn: list[tuple[list[bool], list[int], float, int]], n: int) -> list[dict[str, Triple]]:
    """The targets of ``RECORDS`` records from the drawn segments (the last one repeated to fill)."""
    names = [f"adm-{i}" for i in range(n)]
    out: list[dict[str, Triple]] = []
    for mask, weights, spend, repeat in drawn:
        listed = [i for i in range(n) if mask[i]]
        out.extend([shares_of(listed, [weights[i] for i in listed], spend, names)] * repeat)
    while len(out) < RECORDS:
        out.append(out[-1])
    return out[:RECORDS]


def simulate(n: int, published: list[dict[str, Triple]], lag: list[float], sizes: list[float],
             active: list[bool] | None = None, window: float = WINDOW) -> None:
    """Every admitter applies record k at ``k * INTERVAL + lag[k * 4 + i]`` and, in the seconds
    where ``active[second * 4 + i]`` (always, by default), tries a request every ``STEP``; asserts
    the bound over every window between two admissions. An idle admitter keeps its bucket's
    credit, which is what a share moved onto it must not double."""
    names = [f"adm-{i}" for i in range(n)]
    big = pool("p", replicas=8, per=(1e6, 1e9, 1e6))  # the pool never binds: only the entitlement's limit does
    admitters = [Admitter(name, PoolLive(big, [ent("e", window=window, burst=TOTAL)], now=0.0)) for name in names]
    # When each admitter applies record k: after it is published, before record k+1 is.
    applies = sorted((k * INTERVAL + lag[k * 4 + i], i, k) for k in range(len(published)) for i in range(n))
    admitted: list[tuple[float, float]] = []
    primings: list[tuple[float, float]] = []  # (when, depth): a bucket filling at its first positive share
    biggest = max(sizes)
    t, step, a = 0.0, 0, 0
    end = len(published) * INTERVAL + 3.0
    while t <= end:
        while a < len(applies) and applies[a][0] <= t:
            _, i, k = applies[a]
            adm = admitters[i]
            share, _ = share_for(adm.name, published[k], TOTAL, n)
            adm.live.apply_share("e", share, TOTAL, n, t)
            if share[0] > 0 and not adm.primed:
                adm.primed = True
                primings.append((t, share[0] * window))
            adm.applied = k + 1
            a += 1
        second = min(int(t / INTERVAL), len(published) + 2)
        for i, adm in enumerate(admitters):
            if active is not None and not active[second * 4 + i]:
                continue
            amount = sizes[(step + i) % len(sizes)]
            e = adm.live.entitlements["e"]
            cost = RequestCost(int(amount), 0, 0, 1.0, 1.0)
            rid = f"{adm.name}-{step}"
            d = decide(adm.live, e, rid, cost, t)
            if d.verdict is Verdict.ADMIT:
                admitted.append((t, amount))
                adm.live.release(rid, t)  # done at once: the reserved charge stands
        step += 1
        t = step * STEP
    # Every window between two admissions (prefix sums; admissions are in time order).
    times = [x for x, _ in admitted]
    prefix = [0.0]
    for _, amount in admitted:
        prefix.append(prefix[-1] + amount)
    for lo in range(len(admitted)):
        for hi in range(lo, len(admitted)):
            t0, t1 = times[lo], times[hi]
            got = prefix[hi + 1] - prefix[lo]
            primed = sum(depth for when, depth in primings if t0 < when <= t1)
            depth = LIMIT * window
            bound = LIMIT * (t1 - t0) + depth + n * biggest + primed
            assert got <= bound + 1e-6, (
                f"admitted {got:.0f} in [{t0:.2f}, {t1:.2f}] > bound {bound:.0f} "
                f"(limit x T {LIMIT * (t1 - t0):.0f} + depth {depth:.0f} + overshoot {n * biggest:.0f} "
                f"+ primed {primed:.0f})")


def published_of(targets: list[dict[str, Triple]]) -> list[dict[str, Triple]]:
    """What the pipeline publishes for a run of targets (``hold_raises`` against the previous one)."""
    out, previous = [], {}
    for t in targets:
        out.append(hold_raises(t, previous))
        previous = t
    return out


# derandomize: CI runs the same examples every time (no database carries a failure between runs).
@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 4),
    drawn=segments,
    lags=st.lists(st.floats(0.0, INTERVAL * 0.999), min_size=RECORDS * 4, max_size=RECORDS * 4),
    # Small next to the depth, so that the overshoot term (one request per admitter) stays small
    # and a bucket that hands out its depth twice shows; a small share's depth is smaller still.
    sizes=st.lists(st.sampled_from([10.0, 50.0, 100.0, 200.0]), min_size=1, max_size=8),
    active=st.lists(st.sampled_from([True, True, True, False]), min_size=(RECORDS + 3) * 4,
                    max_size=(RECORDS + 3) * 4),  # mostly busy: an overshoot needs demand
)
def test_admitted_never_exceeds_the_limit_plus_one_depth(n: int, drawn: list, lags: list[float],
                                                         sizes: list[float], active: list[bool]) -> None:
    simulate(n, published_of(records_of(drawn, n)), lags, sizes, active)


def test_a_share_swapped_every_tick_while_one_admitter_lags_stays_within_the_limit() -> None:
    """The whole limit moves between two admitters every record, and the admitter that loses it applies
    the record 0.9 s after the one that gains it: without ``hold_raises`` both enforce the whole
    limit for 0.9 s of every second."""
    whole = {"adm-0": TOTAL, "adm-1": NOTHING}
    other = {"adm-0": NOTHING, "adm-1": TOTAL}
    targets = [whole if k % 2 == 0 else other for k in range(RECORDS)]
    # record k (even: adm-0 gains) is applied late by the admitter it cuts
    lags = [0.9 if (i == 1) == (k % 2 == 0) else 0.0 for k in range(RECORDS) for i in range(4)]
    simulate(2, published_of(targets), lags, [50.0], window=2.0)  # a short window: the excess shows sooner


def test_a_share_moved_from_an_admitter_that_spent_its_bucket_is_not_admitted_twice() -> None:
    """adm-0 holds 99 % and spends its full bucket in seconds 4-6; then the share moves to adm-1, idle
    until second 7 with a full bucket of its 1 %. Granting adm-1 the extra depth on its raise
    while adm-0's debt stays behind at adm-0 (floored at minus its new depth, 0) admits that depth
    twice: the whole-limit semantics (``share=False``) fail here."""
    most = {"adm-0": (0.99 * LIMIT, 0.99 * KV, 0.99 * CONC), "adm-1": (0.01 * LIMIT, 0.01 * KV, 0.01 * CONC)}
    moved = {"adm-0": NOTHING, "adm-1": TOTAL}
    targets = [most] * 6 + [moved] * (RECORDS - 6)
    seconds = RECORDS + 3
    active = [(4 <= sec < 6) if i == 0 else (i == 1 and sec >= 7) for sec in range(seconds) for i in range(4)]
    simulate(2, published_of(targets), [0.0] * (RECORDS * 4), [100.0], active, window=2.0)


def test_the_fallback_share_is_nothing_when_the_record_lists_others() -> None:
    share, fallback = share_for("adm-9", {"adm-0": TOTAL}, TOTAL, 2)
    assert share == NOTHING and fallback
