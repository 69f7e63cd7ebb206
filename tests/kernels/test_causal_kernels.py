"""The slot-array causal post-processing: every kernel gives, per slot, one ``OnlinePostProcessor``'s events.

One set of tests over the kernels ``numpy`` (one reference per slot), ``cpu`` (numba) and ``cuda`` (numba CUDA,
here in the simulator on small inputs; tests/conftest.py turns it on): random multi-stream runs and adversarial
ones, each slot's events compared with those of its own ``OnlinePostProcessor`` fed the same columns (same
events in the same order; scores within 1e-5). Plus the CUDA kernels compiled to PTX for the GPUs ecm-edge
targets, and a real-GPU agreement check (``-m gpu``).
"""

from __future__ import annotations

import inspect
import itertools
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ptx_helpers import ptx_report

from ecm_edge.config import CHOICES, load_config
from ecm_edge.environment import cuda_gpu_visible, cuda_simulator_enabled
from ecm_edge.errors import DataError, EcmEdgeError
from ecm_edge.kernels import causal_device
from ecm_edge.kernels.causal_state import pending_capacity, pending_per_threshold, segment_capacity
from ecm_edge.kernels.params import PostParams
from ecm_edge.runtime.causal import SlotPostProcessor, resolve_kernels
from ecm_edge.runtime.online import OnlineParams, OnlinePostProcessor

KERNELS = ["numpy", "cpu", "cuda"]
EXAMPLES = {"numpy": 8, "cpu": 12, "cuda": 2}  # the simulator runs a Python thread per CUDA thread
SCORE_TOLERANCE = 1e-5 + 1e-9  # event scores are rounded to 5 decimals; a last-bit difference may round apart
STEP = 0.64
THRESHOLDS = (0.1, 0.3, 0.5)



@pytest.fixture(autouse=True)
def fast_simulator_for_cuda(request):
    """The simulator's short GIL switch interval (tests/conftest.py) for the cuda runs only: it slows the numba
    thread pool of the cpu runs tenfold."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("kernels") == "cuda":
        request.getfixturevalue("fast_cuda_simulator")


def need(kernels: str) -> None:
    if kernels == "cuda" and not (cuda_simulator_enabled() or cuda_gpu_visible()):
        pytest.skip("kernels 'cuda' unavailable here (needs a GPU or NUMBA_ENABLE_CUDASIM=1)")
    if kernels == "cuda":
        pytest.importorskip("numba.cuda")


def params(horizon: int = 12, warmup: int = 3, emit_open: bool = True, source: str = "cas", mode: str = "clean",
           class_threshold: float = 0.0, gamma: float = 0.2, thresholds=THRESHOLDS, nms_iou: float = 0.6,
           oic_lambda: float = 0.4) -> OnlineParams:
    post = PostParams(mode=mode, class_threshold=class_threshold, act_thresholds=thresholds,
                      oic_lambda=oic_lambda, gamma=gamma, nms_iou=nms_iou)
    return OnlineParams(post, horizon=horizon, topk_ratio=0.3, warmup=warmup, emit_open=emit_open,
                        score_source=source)


def comparable(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "emitted_at"} for e in events]


def assert_same_events(found: list[dict], expected: list[dict], where: str) -> None:
    found, expected = comparable(found), comparable(expected)
    assert len(found) == len(expected), f"{where}: {len(found)} events instead of {len(expected)}:\n" \
                                        f"{found}\n{expected}"
    for a, b in zip(found, expected, strict=True):
        assert {**a, "score": 0} == {**b, "score": 0}, f"{where}: {a} != {b}"
        assert abs(a["score"] - b["score"]) <= SCORE_TOLERANCE, f"{where}: {a} != {b}"


class Twin:
    """A SlotPostProcessor and one OnlinePostProcessor per slot, fed alike and compared at every call."""

    def __init__(self, kernels: str, p: OnlineParams, classes: int, capacity: int = 1):
        self.p, self.names = p, [f"class{c}" for c in range(classes)]
        self.slots = SlotPostProcessor(p, self.names, kernels, capacity=capacity)
        self.refs: dict[int, OnlinePostProcessor] = {}
        self.clock: dict[int, float] = {}
        self.events = 0

    def join(self, slot: int) -> None:
        self.slots.reset(slot)
        self.refs[slot] = OnlinePostProcessor(self.p, self.names)
        self.clock[slot] = 10.0 * slot

    def push(self, columns: dict[int, np.ndarray], weights: dict[int, np.ndarray] | None = None,
             lag: float = 0.0) -> None:
        order = list(columns)
        starts, ends, nows = [], [], []
        for slot in order:
            m = len(columns[slot])
            start = self.clock[slot] + STEP * np.arange(m)
            starts.append(start.tolist())
            ends.append((start + STEP).tolist())
            nows.append(None if lag == 0 else (start + STEP + lag).tolist())
            self.clock[slot] += STEP * m
        w = None if weights is None else [weights[s] for s in order]
        found = self.slots.push(order, [columns[s] for s in order], starts, ends, nows, w)
        for i, slot in enumerate(order):
            expected = self.refs[slot].push(columns[slot], starts[i], ends[i], nows[i],
                                            None if w is None else w[i])
            self.events += len(expected)
            assert_same_events(found[i], expected, f"push, slot {slot}")

    def flush(self, slots: list[int], nows: list[float | None] | None = None) -> None:
        nows = [None] * len(slots) if nows is None else nows
        found = self.slots.flush(slots, nows)
        for i, slot in enumerate(slots):
            expected = self.refs[slot].flush(nows[i])
            self.events += len(expected)
            assert_same_events(found[i], expected, f"flush, slot {slot}")


def smooth(rng: np.random.Generator, length: int, classes: int, scale: float = 2.0) -> np.ndarray:
    """CAS-like logits: smoothed noise with runs of activity."""
    noise = rng.normal(size=(length + 4, classes))
    kernel = np.ones(5) / 5
    rows = np.stack([np.convolve(noise[:, c], kernel, mode="valid") for c in range(classes)], axis=1)
    return (scale * rows[:length] - 0.3).astype(np.float32)


# ---- random multi-stream runs --------------------------------------------------------------------------------


@st.composite
def runs(draw, max_slots: int, max_ticks: int):
    return {
        "seed": draw(st.integers(0, 2**31)), "slots": draw(st.integers(1, max_slots)),
        "ticks": draw(st.integers(1, max_ticks)), "classes": draw(st.integers(1, 4)),
        "horizon": draw(st.integers(1, 14)), "warmup": draw(st.integers(0, 6)),
        "source": draw(st.sampled_from(["cas", "weights", "fused"])), "mode": draw(st.sampled_from(["clean", "ecm"])),
        "class_threshold": draw(st.sampled_from([0.0, 0.3])), "style": draw(st.sampled_from(["smooth", "plateaus"])),
    }


def random_run(kernels: str, run: dict) -> None:
    rng = np.random.default_rng(run["seed"])
    p = params(horizon=run["horizon"], warmup=run["warmup"], source=run["source"], mode=run["mode"],
               class_threshold=run["class_threshold"])
    twin = Twin(kernels, p, run["classes"])
    live: list[int] = []
    for _ in range(run["ticks"]):
        if (rng.random() < 0.3 and len(live) < run["slots"]) or not live:  # a stream joins, the lowest free slot
            slot = min(set(range(run["slots"] + 1)) - set(live))
            twin.join(slot)
            live.append(slot)
        if len(live) > 1 and rng.random() < 0.15:  # a stream leaves
            slot = live.pop(int(rng.integers(len(live))))
            twin.flush([slot], [None if rng.random() < 0.5 else twin.clock[slot] + 1.0])
        pushed = [s for s in live if rng.random() < 0.8]
        columns, weights = {}, {}
        for slot in pushed:
            m = int(rng.integers(0, 5))
            if run["style"] == "plateaus":
                columns[slot] = rng.choice([-1.0, 0.0, 0.5, 1.0], (m, run["classes"])).astype(np.float32)
            else:
                columns[slot] = smooth(rng, m, run["classes"])
            weights[slot] = rng.normal(size=(m, run["classes"])).astype(np.float32)
        twin.push(columns, weights if run["source"] != "cas" else None, lag=float(rng.choice([0.0, 0.5])))
    twin.flush(live)


@pytest.mark.parametrize("kernels", KERNELS)
def test_random_multi_stream_runs_match_the_reference(kernels):
    need(kernels)

    @settings(max_examples=EXAMPLES[kernels], deadline=None, suppress_health_check=list(HealthCheck))
    @given(run=runs(max_slots=3 if kernels == "cuda" else 5, max_ticks=8 if kernels == "cuda" else 30))
    def check(run):
        random_run(kernels, run)

    check()


# ---- adversarial runs ---------------------------------------------------------------------------------------------


def exact_plateaus(classes: int, length: int) -> np.ndarray:
    """Values at the thresholds exactly (a column whose max is 1 and min 0 keeps them through normalization)."""
    levels = np.array([0.0, 1.0, *THRESHOLDS, *np.nextafter(np.float32(THRESHOLDS), np.float32(0))], np.float32)
    rows = np.repeat(levels[np.arange(length) % levels.size][:, None], classes, axis=1)
    rows[0], rows[1] = 1.0, 0.0
    return rows


CASES = {
    "plateaus at the thresholds": dict(columns=lambda rng: exact_plateaus(3, 30), warmup=0),
    "all-zero columns": dict(columns=lambda rng: np.zeros((20, 3), np.float32)),
    "ties across classes": dict(columns=lambda rng: np.repeat(smooth(rng, 40, 1), 3, axis=1)),
    "one column": dict(columns=lambda rng: smooth(rng, 1, 3), warmup=0),
    "two columns": dict(columns=lambda rng: smooth(rng, 2, 3), warmup=0),
    "warm-up longer than the stream": dict(columns=lambda rng: smooth(rng, 5, 3), warmup=9),
    "warm-up longer than the horizon": dict(columns=lambda rng: smooth(rng, 40, 3), warmup=20, horizon=6),
    "horizon of one column": dict(columns=lambda rng: smooth(rng, 25, 3), horizon=1),
    "ecm mode, gamma 0, no NMS": dict(columns=lambda rng: smooth(rng, 40, 3), mode="ecm", gamma=0.0, nms_iou=1.0),
    "NMS IoU 0": dict(columns=lambda rng: smooth(rng, 40, 3), nms_iou=0.0),
    "lambda 0": dict(columns=lambda rng: smooth(rng, 40, 3), oic_lambda=0.0),
    "class threshold filters": dict(columns=lambda rng: smooth(rng, 40, 3), class_threshold=0.34),
    "thresholds from 0": dict(columns=lambda rng: smooth(rng, 30, 3), thresholds=(0.0, 0.2, 0.4)),
    "float64 columns": dict(columns=lambda rng: smooth(rng, 30, 3).astype(np.float64) / 3.0),
}


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("case", list(CASES))
def test_adversarial_streams_match_the_reference(kernels, case):
    need(kernels)
    spec = dict(CASES[case])
    make = spec.pop("columns")
    rng = np.random.default_rng(3)
    columns = make(rng)
    twin = Twin(kernels, params(**spec), columns.shape[1])
    twin.join(0)
    twin.join(1)
    cuts = [0, 1, 3, 4, 9, len(columns)]
    for a, b in itertools.pairwise(cuts):  # different column counts per push and per slot
        twin.push({0: columns[a:b], 1: columns[a:b][::-1].copy() * 0.5})
    twin.flush([0, 1])


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("source", ["cas", "weights", "fused"])
def test_score_sources_with_slot_reuse(kernels, source):
    need(kernels)
    rng = np.random.default_rng(5)
    twin = Twin(kernels, params(source=source, warmup=4), 3)
    for slot in (0, 1, 2):
        twin.join(slot)
    for tick in range(12):
        live = [0, 1, 2] if tick < 6 else [0, 2]
        columns = {s: smooth(rng, 1 + (s + tick) % 3, 3) for s in live}
        weights = {s: rng.normal(size=c.shape).astype(np.float32) for s, c in columns.items()}
        twin.push(columns, weights)
        if tick == 5:  # slot 1 leaves, another stream takes it later
            twin.flush([1])
        if tick == 8:
            twin.join(1)
            twin.push({1: smooth(rng, 6, 3)}, {1: rng.normal(size=(6, 3)).astype(np.float32)})
    twin.flush([0, 1, 2], [None, 100.0, None])


@pytest.mark.parametrize("kernels", KERNELS)
def test_flush_semantics(kernels):
    need(kernels)
    rng = np.random.default_rng(9)
    twin = Twin(kernels, params(warmup=2), 2, capacity=1)
    twin.join(3)  # beyond the capacity: the slots grow
    assert twin.slots.capacity >= 4
    twin.flush([3])  # nothing pushed: nothing to emit
    twin.push({3: smooth(rng, 15, 2)})
    twin.flush([3], [1e3])  # an explicit end time sets the latencies
    twin.push({3: smooth(rng, 10, 2)})  # a flushed slot starts afresh
    twin.flush([3])
    assert twin.slots.flush([3]) == [[]]


@pytest.mark.parametrize("kernels", KERNELS)
def test_one_array_for_all_slots(kernels):
    need(kernels)
    rng = np.random.default_rng(2)
    p = params(warmup=0)
    names = ["a", "b"]
    slots = SlotPostProcessor(p, names, kernels, capacity=2)
    refs = [OnlinePostProcessor(p, names), OnlinePostProcessor(p, names)]
    for slot in (0, 1):
        slots.reset(slot)
    columns = [smooth(rng, 12, 2), smooth(rng, 7, 2)]
    times = [STEP * np.arange(len(c)) for c in columns]
    found = slots.push([0, 1], np.concatenate(columns), times, [t + STEP for t in times])
    found = [f + g for f, g in zip(found, slots.flush([0, 1]), strict=True)]
    for slot in (0, 1):
        expected = refs[slot].push(columns[slot], times[slot], times[slot] + STEP) + refs[slot].flush()
        assert_same_events(found[slot], expected, f"slot {slot}")


# ---- errors, capacities and the config key ---------------------------------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
def test_input_errors_say_what_to_fix(kernels):
    need(kernels)
    slots = SlotPostProcessor(params(source="fused"), ["a", "b"], kernels)
    with pytest.raises(DataError, match="reset"):
        slots.push([0], [np.zeros((1, 2), np.float32)], [[0.0]], [[1.0]])
    slots.reset(0)
    with pytest.raises(EcmEdgeError, match="transition weights"):
        slots.push([0], [np.zeros((1, 2), np.float32)], [[0.0]], [[1.0]])
    bad = np.array([[np.nan, 0.0]], np.float32)
    with pytest.raises(DataError, match="NaN or Inf"):
        slots.push([0], [bad], [[0.0]], [[1.0]], weights=[np.zeros((1, 2), np.float32)])
    with pytest.raises(DataError, match=r"expected \[1, 2\]"):
        slots.push([0], [np.zeros((1, 3), np.float32)], [[0.0]], [[1.0]], weights=[np.zeros((1, 3))])


def test_capacities_are_derived_from_the_parameters():
    assert pending_per_threshold(0.0, 0) == 2  # λ = 0: a candidate is ready when it closes
    assert pending_per_threshold(0.4, 109) == 57  # THUMOS14 stream: the warm-up of 109 columns dominates
    assert 10 < pending_per_threshold(0.4, 0) < 30  # after the warm-up: a few dozen at most, whatever the runs
    assert pending_capacity(8, 0.4, 109) == 8 * 57
    assert segment_capacity(8, 0.4, 870) == 609 + 8


def test_segment_table_overflow_is_counted_and_logged(caplog):
    rng = np.random.default_rng(4)
    p = params(nms_iou=1.0, warmup=0, thresholds=(0.1, 0.3, 0.5, 0.7))
    slots = SlotPostProcessor(p, ["a"], "cpu", segment_capacity=1)
    slots.reset(0)
    columns = smooth(rng, 80, 1, scale=6.0)
    times = STEP * np.arange(80)
    with caplog.at_level(logging.ERROR, logger="ecm_edge"):
        slots.push([0], [columns], [times], [times + STEP])
    assert slots.overflows(0)[1] > 0
    assert "segment_capacity" in caplog.text and "stream.kernels=numpy" in caplog.text


def test_kernels_config_key():
    assert CHOICES["stream.kernels"] == ("auto", "numpy", "cpu", "cuda")
    cfg = load_config("thumos14", ["stream.kernels=cpu"])
    assert SlotPostProcessor.from_config(cfg, [f"c{i}" for i in range(20)]).kernels == "cpu"
    assert load_config("thumos14").stream.kernels == "auto"
    assert resolve_kernels("auto") == ("cuda" if cuda_gpu_visible() else "cpu")
    with pytest.raises(EcmEdgeError, match=r"stream\.kernels"):
        resolve_kernels("gpu")


def test_shared_device_functions_are_leaves():
    """Both backends compile ``causal_device``'s functions as they are: one that called another by its global
    name would reach the plain Python function, which neither backend can call."""

    functions = {name for name, fn in inspect.getmembers(causal_device, inspect.isfunction)
                 if fn.__module__ == causal_device.__name__}
    assert len(functions) > 10
    for name in functions:
        assert not set(getattr(causal_device, name).__code__.co_names) & functions, name


# ---- PTX for the GPUs ecm-edge targets, and a real GPU -----------------------------------------------------------

CAPABILITIES = [(8, 7), (9, 0)]
PTX_SETUP = """
from ecm_edge.kernels.causal_cuda import THREADS, kernels
from ecm_edge.kernels.causal_cuda_kernels import KERNEL_NAMES, kernel_signatures
from ecm_edge.kernels.causal_state import CausalParams, State, kernel_params, state_shapes
params = CausalParams(20, 870, 109, 0.125, np.arange(0.01, 0.2, 0.025).astype(np.float32), 0.4, 0.15, 0.25, 0.6,
                      0.0, True, 2, 456, 617)
host = State(**{name: np.zeros((1,) + shape[1:], dtype) for name, (shape, dtype) in state_shapes(params, 1).items()})
signatures = kernel_signatures(typeof(host), typeof(kernel_params(params)), "float32")
built = kernels(THREADS)
"""


@pytest.mark.slow  # about 40 s per target on two cores: every device function is inlined into both kernels
def test_cuda_kernels_compile_to_ptx():
    report = ptx_report(PTX_SETUP, CAPABILITIES)
    from ecm_edge.kernels.causal_cuda_kernels import KERNEL_NAMES

    assert report.pop("built") == sorted(KERNEL_NAMES)
    assert set(report) == {f"{name}/{a}.{b}" for name in KERNEL_NAMES for a, b in CAPABILITIES}
    assert all(compiled["target"] for compiled in report.values()), report


@pytest.mark.gpu
def test_real_gpu_agrees_with_the_reference_and_reads_device_columns():
    if not cuda_gpu_visible():
        pytest.skip("no CUDA GPU visible (run it on a GPU machine: scripts/gpu_check.sh)")
    from numba import cuda

    rng = np.random.default_rng(12)
    classes, streams, ticks = 20, 64, 60
    p = params(horizon=120, warmup=20, source="fused", class_threshold=0.04,
               thresholds=tuple(np.arange(0.01, 0.2, 0.025)))
    twin = Twin("cuda", p, classes)
    for slot in range(streams):
        twin.join(slot)
    for _ in range(ticks):
        columns = {s: smooth(rng, int(rng.integers(0, 3)), classes, scale=4.0) for s in range(streams)}
        weights = {s: rng.normal(size=c.shape).astype(np.float32) for s, c in columns.items()}
        twin.push(columns, weights)
    twin.flush(list(range(streams)))
    assert twin.events > 100
    slots = SlotPostProcessor(params(warmup=0), [f"c{c}" for c in range(classes)], "cuda", capacity=2)
    ref = OnlinePostProcessor(params(warmup=0), [f"c{c}" for c in range(classes)])
    slots.reset(0)
    host = smooth(rng, 50, classes, scale=4.0)
    times = STEP * np.arange(50)
    stream = cuda.stream()
    found = slots.push([0], cuda.to_device(host, stream=stream), [times], [times + STEP], stream=stream)
    assert_same_events(found[0] + slots.flush([0])[0],
                       ref.push(host, times, times + STEP) + ref.flush(), "device columns")


@pytest.mark.parametrize("whole", [True, False])
def test_cuda_reads_device_columns(whole):
    need("cuda")
    from numba import cuda

    rng = np.random.default_rng(6)
    p = params(warmup=2, source="weights")
    names = ["a", "b", "c"]
    slots = SlotPostProcessor(p, names, "cuda", capacity=2)
    refs = [OnlinePostProcessor(p, names), OnlinePostProcessor(p, names)]
    for slot in (0, 1):
        slots.reset(slot)
    columns = [smooth(rng, 9, 3), smooth(rng, 5, 3)]
    weights = [rng.normal(size=c.shape).astype(np.float32) for c in columns]
    times = [STEP * np.arange(len(c)) for c in columns]
    stream = cuda.stream()
    if whole:
        cas, w = cuda.to_device(np.concatenate(columns)), cuda.to_device(np.concatenate(weights))
    else:
        cas, w = [cuda.to_device(c) for c in columns], [cuda.to_device(x) for x in weights]
    found = slots.push([0, 1], cas, times, [t + STEP for t in times], weights=w, stream=stream)
    found = [f + g for f, g in zip(found, slots.flush([0, 1], stream=stream), strict=True)]
    for slot in (0, 1):
        expected = refs[slot].push(columns[slot], times[slot], times[slot] + STEP, None, weights[slot])
        assert_same_events(found[slot], expected + refs[slot].flush(), f"slot {slot}")
