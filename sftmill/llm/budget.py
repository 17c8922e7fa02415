"""Budget caps: a run's LLM spending, in cost and tokens, checked
before each chunk of requests is sent.

The flow writes the recipe's `budget` and `prices` into the run database's
meta table (`record_budget`); an LLM with that store checks every chunk of a
batch before sending it: what the run's calls have spent so far (the
`llm_calls` table, after a journal merge) plus the chunk's worst case —
estimated prompt tokens + `max_tokens` for each request not in the cache —
plus the worst case of every request still in flight in this process (of
any LLM on the same run database: the answers and the judge beside them)
must stay within the caps.  A chunk that passes reserves its worst case
until each of its requests has ended (`Reservation`).  Otherwise the chunk is not sent, the chunks in
flight finish (and are kept), and `BudgetExceeded` says what was spent and
what was left to do.  Raising the cap and running again goes on from there:
every finished call is answered from the cache.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sftmill.core.sections import Price
from sftmill.llm.errors import RunStop

if TYPE_CHECKING:
    from sftmill.core.recipe import Recipe
    from sftmill.core.sections import Price
    from sftmill.core.store import Store

META_KEY = "budget"


class BudgetExceeded(RunStop):
    """Sending the next requests would pass the run's budget."""

    marker = "budget reached:"


_LOCK = threading.Lock()  # one check-and-reserve at a time, across the process's LLM threads
_HELD: dict[str, list[float]] = {}  # run database → [cost, tokens] reserved by requests in flight


@dataclass
class Reservation:
    """The worst case of a chunk's requests in flight, held against the
    budget until each ends (`release(i)` as request i's answer is in, then
    `release_all` when the chunk is over, whatever happened)."""

    db: str
    amounts: dict[int, tuple[float, int]] = field(default_factory=dict)  # index → (cost, tokens)

    def release(self, i: int) -> None:
        with _LOCK:
            cost, tokens = self.amounts.pop(i, (0.0, 0))
            held = _HELD.setdefault(self.db, [0.0, 0])
            held[0] -= cost
            held[1] -= tokens
            if held[1] <= 0:  # nothing in flight (and no float dust left over)
                del _HELD[self.db]

    def release_all(self) -> None:
        for i in list(self.amounts):
            self.release(i)


def held(db: str) -> tuple[float, int]:
    """(cost, tokens) reserved by this process's requests in flight on `db`."""
    with _LOCK:
        cost, tokens = _HELD.get(db, (0.0, 0))
        return cost, int(tokens)


@dataclass
class Budget:
    max_cost: float | None
    max_tokens: int | None
    prices: dict[str, "Price"]  # by model name

    def cost(self, model: str, tokens_in: float, tokens_out: float, batch: bool = False) -> float:
        price = self.prices.get(model)  # a model without a price costs nothing
        return price.cost(tokens_in, tokens_out, batch) if price is not None else 0.0

    def spent(self, store: "Store") -> tuple[float, int]:
        """(cost, tokens) of the run's answered calls (those answered through
        a Batch API at the batch price)."""
        rows = store.execute("SELECT model, backend LIKE '%-batch', coalesce(sum(tokens_in), 0), "
                             "coalesce(sum(tokens_out), 0) FROM llm_calls WHERE status = 'ok' "
                             "GROUP BY ALL")
        return (sum(self.cost(m, i, o, bool(b)) for m, b, i, o in rows),
                int(sum(i + o for _, _, i, o in rows)))

    def reserve(self, store: "Store", model: str, stage: str,
                requests: dict[int, tuple[int, int]], batch: bool = False) -> Reservation:
        """Reserve the worst case of `requests` (index → (prompt tokens,
        max_tokens)), or raise `BudgetExceeded` if what is spent, what is in
        flight and these could pass a cap."""
        amounts = {i: (self.cost(model, t_in, t_out, batch), t_in + t_out)
                   for i, (t_in, t_out) in requests.items()}
        more_cost = sum(c for c, _ in amounts.values())
        more_tokens = sum(t for _, t in amounts.values())
        with _LOCK:
            spent_cost, spent_tokens = self.spent(store)
            flying_cost, flying_tokens = _HELD.get(store.path, (0.0, 0))
            cost, tokens = spent_cost + flying_cost, spent_tokens + flying_tokens
            over = []
            flying = " (with calls in flight)" if flying_tokens else ""
            if self.max_cost is not None and cost + more_cost > self.max_cost:
                over.append(f"spent {cost:.4f}{flying} of budget.max_cost {self.max_cost:g}; "
                            f"they could cost {more_cost:.4f}")
            if self.max_tokens is not None and tokens + more_tokens > self.max_tokens:
                over.append(f"used {int(tokens):,}{flying} of budget.max_tokens "
                            f"{self.max_tokens:,} tokens; they could use {more_tokens:,}")
            if over:
                raise BudgetExceeded(
                    f"budget reached: stopped before {len(requests)} more {stage or 'LLM'} calls ("
                    + "; ".join(over) + "). Finished work is kept: raise the budget and run again "
                    "to go on.")
            held_now = _HELD.setdefault(store.path, [0.0, 0])
            held_now[0] += more_cost
            held_now[1] += more_tokens
        return Reservation(store.path, amounts)


def record_budget(store: "Store", recipe: "Recipe") -> None:
    """Write the recipe's budget and prices where the run's LLMs read them
    (no budget: remove an earlier one)."""
    budget = recipe.budget
    if budget.max_cost is None and budget.max_tokens is None:
        store.execute("DELETE FROM meta WHERE key = ?", [META_KEY])
        return
    store.set_meta(META_KEY, json.dumps({
        "max_cost": budget.max_cost, "max_tokens": budget.max_tokens,
        "prices": {m: p.model_dump() for m, p in recipe.prices.items()}}))


def budget_of(store: "Store | None") -> Budget | None:
    raw = store.get_meta(META_KEY) if store is not None else None
    if not raw:
        return None

    data = json.loads(raw)
    return Budget(data["max_cost"], data["max_tokens"],
                  {m: Price(**p) for m, p in data["prices"].items()})
