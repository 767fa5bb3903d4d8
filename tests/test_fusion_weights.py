"""Tests for weight-space fusion (tunefuse.fusion.weights): tiny state dicts, exact hand-computed cases, error texts."""

import copy
import dataclasses
import doctest
import math
import weakref

import pytest
import torch
from safetensors.torch import save_file

import tunefuse.fusion.weights as W
from tunefuse.fusion.weights import (
    WEIGHT_METHODS,
    WeightMethod,
    _elect_sign,
    _register,
    _trim,
    check_compatible,
    get_weight_method,
    greedy_soup,
    interpolate,
    task_arithmetic,
    uniform,
    uniform_from_files,
)


def make_state(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(dtype)
    model.register_buffer("position_ids", torch.arange(5))  # an int buffer, as in transformer embeddings
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_states_equal(a, b, **tol):
    assert sorted(a) == sorted(b)  # safetensors files store keys sorted, so order is not compared
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], **tol)


@pytest.fixture
def states():
    return [make_state(s) for s in range(3)]


# ---------------------------------------------------------------------------------------------------------- uniform
def test_uniform_equals_manual_mean(states):
    out = uniform(states)
    for k, v in out.items():
        expected = torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
        torch.testing.assert_close(v, expected)
    assert torch.equal(out["position_ids"], torch.arange(5))


def test_uniform_weights_are_normalised(states):
    a, b = states[:2]
    out = uniform([a, b], weights=[2, 6])
    assert_states_equal(out, uniform([a, b], weights=[0.25, 0.75]))
    torch.testing.assert_close(out["0.weight"], 0.25 * a["0.weight"] + 0.75 * b["0.weight"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_uniform_keeps_dtype(dtype):
    out = uniform([make_state(0, dtype), make_state(1, dtype)])
    assert out["0.weight"].dtype == dtype and out["position_ids"].dtype == torch.int64


@pytest.mark.parametrize("weights, match", [
    ([0, 0], r"weights must be finite, non-negative and sum to a positive number; got \[0\.0, 0\.0\]"),
    ([-1, 2], r"weights must be .*non-negative.*got \[-1\.0, 2\.0\]"),
    ([math.nan, 1], r"weights must be finite.*got \[nan, 1\.0\]"),
    ([math.inf, 1], r"weights must be finite.*got \[inf, 1\.0\]"),
    ([1], r"weights must have one entry per state \(2\); got 1"),
])
def test_uniform_rejects_bad_weights(states, weights, match):
    with pytest.raises(ValueError, match=match):
        uniform(states[:2], weights=weights)


def test_uniform_rejects_non_numeric_weights(states):
    with pytest.raises(TypeError, match=r"weights must be a sequence of numbers; got 'x'"):
        uniform(states[:2], weights=[1, "x"])


def test_uniform_rejects_different_int_buffers(states):
    states[1]["position_ids"] = torch.arange(5).flip(0)
    with pytest.raises(ValueError, match=r"'position_ids' differs between member 1 and member 0.*drop 'position_ids'"):
        uniform(states)


def test_uniform_rejects_non_state_dict():
    with pytest.raises(TypeError, match=r"member 1 must be a state dict.*got Sequential.*state_dict\(\)"):
        uniform([make_state(0), torch.nn.Sequential()])


# ---------------------------------------------------------------------------------------------- inputs never mutated
def _ties(s):
    return task_arithmetic(s[0], s[1:], method="ties", density=0.5)


@pytest.mark.parametrize("fuse", [
    uniform,
    lambda s: interpolate(s[0], s[1], 0.3),
    lambda s: task_arithmetic(s[0], s[1:], scale=0.7),
    _ties,
    lambda s: task_arithmetic(s[0], s[1:], method="dare_ties", density=0.5),
    lambda s: greedy_soup(s, lambda x: 0.0)[0],
], ids=["uniform", "interpolate", "sum", "ties", "dare_ties", "greedy"])
def test_inputs_are_not_mutated_nor_aliased(states, fuse):
    before = copy.deepcopy(states)
    out = fuse(states)
    for v in out.values():
        v.add_(1)  # writing into the result must not reach the inputs
    for s, b in zip(states, before):
        assert_states_equal(s, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ check_compatible
def _drop(s, k):
    return {key: v for key, v in s.items() if key != k}


@pytest.mark.parametrize("edit, match", [
    (lambda s: _drop(s, "1.bias"), r"member 1 vs member 0: lacks 1 key\(s\) \['1\.bias'\]"),
    (lambda s: {**s, "head.weight": torch.zeros(2)}, r"member 1 vs member 0: has extra 1 key\(s\) \['head\.weight'\]"),
    (lambda s: {**s, "1.weight": torch.zeros(5, 3)},
     r"member 1 vs member 0: differs in shape/dtype at 1 key\(s\) \['1\.weight'\] "
     r"\(e\.g\. '1\.weight': \[5, 3\] torch\.float32 vs \[2, 3\]"),
    (lambda s: {**s, "0.bias": s["0.bias"].half()},
     r"member 1 vs member 0: differs .*'0\.bias'.*float16 vs \[3\] torch\.float32"),
])
def test_check_compatible_names_member_key_reason_and_fix(edit, match):
    a = make_state(0)
    with pytest.raises(ValueError, match=match) as info:
        check_compatible([a, edit(make_state(1))])
    msg = str(info.value)
    assert "\n" not in msg and "different architectures, heads or label sets" in msg
    assert "same backbone with the same classes" in msg and "output-space fusion (voting/stacking)" in msg


def test_check_compatible_custom_names_and_key_count():
    a = {f"k{i}": torch.zeros(1) for i in range(5)}
    with pytest.raises(ValueError, match=r"'bert-b' vs 'bert-a': lacks 5 key\(s\) \['k0', 'k1', 'k2' \(\+2 more\)\]"):
        check_compatible([a, {}], names=["'bert-a'", "'bert-b'"])
    check_compatible([make_state(0), make_state(1)])  # compatible: no error


def test_check_compatible_empty_and_names_length():
    with pytest.raises(ValueError, match=r"states must hold at least one state dict"):
        check_compatible([])
    with pytest.raises(ValueError, match=r"names must have one entry per state \(2\); got 1"):
        check_compatible([make_state(0), make_state(1)], names=["a"])


# ------------------------------------------------------------------------------------------------ uniform_from_files
def _save(states, tmp_path):
    paths = []
    for i, s in enumerate(states):
        if i == 0:  # a folder holding model.safetensors, as save_pretrained writes
            (tmp_path / "m0").mkdir()
            save_file(s, str(tmp_path / "m0" / "model.safetensors"))
            paths.append(tmp_path / "m0")
        else:
            save_file(s, str(tmp_path / f"m{i}.safetensors"))
            paths.append(str(tmp_path / f"m{i}.safetensors"))
    return paths


def test_uniform_from_files_equals_uniform(states, tmp_path):
    paths = _save(states, tmp_path)
    assert_states_equal(uniform_from_files(paths, [1, 2, 3]), uniform(states, [1, 2, 3]), rtol=0, atol=0)


class _Tracked(dict):
    """A state dict that can be weakly referenced, so a test can count how many loaded files are still alive."""


def _track_loads(monkeypatch):
    """Patch the module's loader; return a list that gets, per load, how many earlier loads are still alive."""
    alive_at_load, refs, real_load = [], [], W.load_file

    def load_file(path):
        alive_at_load.append(sum(r() is not None for r in refs))
        state = _Tracked(real_load(path))
        refs.append(weakref.ref(state))
        return state

    monkeypatch.setattr(W, "load_file", load_file)
    return alive_at_load


def test_uniform_from_files_streams_one_file_at_a_time(tmp_path, monkeypatch):
    states = [make_state(s) for s in range(10)]
    paths = _save(states, tmp_path)
    alive_at_load = _track_loads(monkeypatch)
    out = uniform_from_files(paths)
    assert alive_at_load == [0] * 10  # each file is freed before the next one is read
    assert_states_equal(out, uniform(states))


def test_uniform_from_files_errors(states, tmp_path):
    paths = _save(states, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"paths: '.*nope\.safetensors' does not exist.*model\.safetensors"):
        uniform_from_files([*paths, tmp_path / "nope.safetensors"])
    save_file(_drop(states[1], "0.bias"), str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"bad\.safetensors vs .*m0.*lacks 1 key\(s\) \['0\.bias'\].*output-space"):
        uniform_from_files([*paths, tmp_path / "bad.safetensors"])
    with pytest.raises(TypeError, match=r"paths must be a sequence of paths; got the single path.*Wrap it in a list"):
        uniform_from_files(paths[1])
    with pytest.raises(ValueError, match=r"paths must hold at least one file"):
        uniform_from_files([])


# ------------------------------------------------------------------------------------------------------- interpolate
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_interpolate(states, alpha):
    a, b = states[:2]
    out = interpolate(a, b, alpha)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(out[k], (1 - alpha) * a[k] + alpha * b[k])
    if alpha in (0.0, 1.0):
        assert_states_equal(out, a if alpha == 0.0 else b, rtol=0, atol=0)


def test_interpolate_takes_head_only_in_b_and_rejects_keys_only_in_a(states):
    pretrained = {k: v for k, v in states[0].items() if not k.startswith("1.")}  # backbone without the new head
    fine_tuned = states[1]
    out = interpolate(pretrained, fine_tuned, 0.5)
    assert list(out) == list(fine_tuned)
    assert torch.equal(out["1.weight"], fine_tuned["1.weight"])
    with pytest.raises(ValueError, match=r"b vs a: lacks 2 key\(s\) \['1\.bias', '1\.weight'\]"):
        interpolate(fine_tuned, pretrained, 0.5)


@pytest.mark.parametrize("alpha, error", [(-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError),
                                          ("half", TypeError)])
def test_interpolate_rejects_alpha(states, alpha, error):
    with pytest.raises(error, match=r"alpha must be in \[0, 1\] \(0 keeps a, 1 keeps b\); got .*Pass e\.g\. 0\.5"):
        interpolate(states[0], states[1], alpha)


# -------------------------------------------------------------------------------------------------- task arithmetic
def test_task_arithmetic_sum_with_scale_and_weights(states):
    base, s1, s2 = states
    out = task_arithmetic(base, [s1, s2], weights=[1.0, 0.5], scale=0.3)
    for k in ("0.weight", "1.bias"):
        torch.testing.assert_close(out[k], base[k] + 0.3 * ((s1[k] - base[k]) + 0.5 * (s2[k] - base[k])))
    assert torch.equal(out["position_ids"], base["position_ids"])


TAUS = [torch.tensor([3.0, -1.0, 0.5, -4.0]), torch.tensor([-2.0, 5.0, -0.1, 1.0]),
        torch.tensor([1.0, -2.0, 0.2, -3.0])]


def test_trim_rounds_and_keeps_at_least_one():
    t = torch.tensor([[0.1, -0.9], [0.5, 0.3]])
    assert torch.equal(_trim(t, 0.1), torch.tensor([[0.0, -0.9], [0.0, 0.0]]))  # 0.4 entries -> at least 1
    assert torch.equal(_trim(t, 0.6), torch.tensor([[0.0, -0.9], [0.5, 0.0]]))  # 2.4 entries -> 2
    assert torch.equal(_trim(t, 0.65), torch.tensor([[0.0, -0.9], [0.5, 0.3]]))  # 2.6 entries -> 3
    assert torch.equal(_trim(t, 1.0), t)


def test_ties_steps_by_hand():
    assert torch.equal(_trim(TAUS[0], 0.5), torch.tensor([3.0, 0.0, 0.0, -4.0]))  # top 2 of 4 by magnitude
    trimmed = torch.stack([_trim(t, 0.5) for t in TAUS])  # [3,0,0,-4], [-2,5,0,0], [0,-2,0,-3]
    assert torch.equal(_elect_sign(trimmed), torch.tensor([1.0, 1.0, 0.0, -1.0]))  # sums 1, 3, 0, -7


@pytest.mark.parametrize("weights, delta", [
    (None, [3.0, 5.0, 0.0, -3.5]),  # disjoint mean: only entries agreeing with the elected sign count
    ([1.0, 3.0, 1.0], [-2.0, 5.0, 0.0, -3.5]),  # weighting flips entry 0's election to the second member
])
def test_ties_merge_by_hand(weights, delta):
    base = {"w": torch.ones(4), "ids": torch.arange(3)}
    fine = [{"w": base["w"] + t, "ids": torch.arange(3)} for t in TAUS]
    out = task_arithmetic(base, fine, method="ties", density=0.5, scale=2.0, weights=weights)
    torch.testing.assert_close(out["w"], torch.ones(4) + 2.0 * torch.tensor(delta))


def test_dare_is_deterministic_and_unbiased():
    base = {"w": torch.zeros(100_000)}
    fine = [{"w": torch.ones(100_000)}]
    out = task_arithmetic(base, fine, method="dare", density=0.3, seed=1)["w"]
    assert torch.equal(out, task_arithmetic(base, fine, method="dare", density=0.3, seed=1)["w"])
    assert not torch.equal(out, task_arithmetic(base, fine, method="dare", density=0.3, seed=2)["w"])
    assert abs((out != 0).float().mean().item() - 0.3) < 0.01  # ~density of entries survive...
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 1 / 0.3))  # ...rescaled by 1/density
    assert abs(out.mean().item() - 1.0) < 0.03  # so the expected task vector is preserved


@pytest.mark.parametrize("method", ["dare", "dare_ties"])
def test_dare_density_one_equals_its_deterministic_counterpart(states, method):
    plain = "sum" if method == "dare" else "ties"
    out = task_arithmetic(states[0], states[1:], method=method, density=1.0)
    assert_states_equal(out, task_arithmetic(states[0], states[1:], method=plain))


def test_task_arithmetic_averages_new_head_keys(states):
    base = {k: v for k, v in states[0].items() if not k.startswith("1.")}
    out = task_arithmetic(base, states[1:], weights=[1.0, 3.0], method="ties", density=0.5)
    torch.testing.assert_close(out["1.weight"], 0.25 * states[1]["1.weight"] + 0.75 * states[2]["1.weight"])
    with pytest.raises(ValueError, match=r"member 0 vs base: lacks 2 key\(s\) \['1\.bias', '1\.weight'\]"):
        task_arithmetic(states[0], [base])


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "magic"}, r"method must be one of \['sum', 'ties', 'dare', 'dare_ties'\]; got 'magic'"),
    ({"density": 0.0}, r"density must be in \(0, 1\].*got 0\.0. Use e\.g\. 0\.2"),
    ({"density": 1.5}, r"density must be in \(0, 1\].*got 1\.5"),
    ({"scale": math.inf}, r"scale must be a finite number; got inf"),
    ({"weights": [1.0]}, r"weights must have one entry per state \(2\)"),
])
def test_task_arithmetic_rejects_bad_options(states, kwargs, match):
    with pytest.raises(ValueError, match=match):
        task_arithmetic(states[0], states[1:], **kwargs)


# ------------------------------------------------------------------------------------------------------ greedy soup
def _toy(v):
    return {"w": torch.tensor([float(v)]), "ids": torch.arange(3)}


def _closeness_to_one(state):
    return -abs(state["w"].item() - 1.0)


def test_greedy_soup_picks_the_right_subset():
    # Individual scores -8, -1, -1, -6 -> order 1, 2 (tie keeps input order), 3, 0. Soup {0, 2} = 1 scores 0;
    # adding -5 gives -1 and adding 9 gives 3.67: both rejected.
    soup, chosen = greedy_soup([_toy(9), _toy(0), _toy(2), _toy(-5)], _closeness_to_one)
    assert chosen == [1, 2]
    assert torch.equal(soup["w"], torch.tensor([1.0])) and torch.equal(soup["ids"], torch.arange(3))


def test_greedy_soup_keeps_candidates_that_do_not_hurt():
    assert greedy_soup([_toy(1), _toy(1)], _closeness_to_one)[1] == [0, 1]


def test_greedy_soup_from_paths_loads_one_at_a_time(tmp_path, monkeypatch):
    values = [9, 0, 2, -5]
    paths = _save([_toy(v) for v in values], tmp_path)
    alive_at_load = _track_loads(monkeypatch)
    soup, chosen = greedy_soup(paths, _closeness_to_one)
    assert chosen == [1, 2] and torch.equal(soup["w"], torch.tensor([1.0]))
    assert alive_at_load and max(alive_at_load) == 0  # scoring and souping never hold two loaded candidates


def test_greedy_soup_errors(tmp_path):
    with pytest.raises(ValueError, match=r"'b' vs 'a': lacks 1 key\(s\) \['ids'\].*output-space"):
        greedy_soup([_toy(0), {"w": torch.zeros(1)}], _closeness_to_one, names=["'a'", "'b'"])
    with pytest.raises(ValueError, match=r"score\(state\) must be a finite number .* for candidate 0; got nan"):
        greedy_soup([_toy(0)], lambda s: math.nan)
    with pytest.raises(FileNotFoundError, match=r"candidates: '.*gone\.safetensors' does not exist"):
        greedy_soup([_toy(0), tmp_path / "gone.safetensors"], _closeness_to_one)
    with pytest.raises(TypeError, match=r"candidate 1 must be a state dict.*got int"):
        greedy_soup([_toy(0), 3], _closeness_to_one)
    with pytest.raises(ValueError, match=r"candidates must hold at least one"):
        greedy_soup([], _closeness_to_one)


# --------------------------------------------------------------------------------------------------------- registry
SCORE = {"score": lambda s: 0.0}
CALLS = {  # one smoke call per registered method; a new entry without one fails test_every_method_has_a_call
    "uniform_soup": lambda fn, s: fn(s),
    "greedy_soup": lambda fn, s: fn(s, **SCORE)[0],
    "wise_ft": lambda fn, s: fn(s[0], s[1], 0.5),
    "task_arithmetic": lambda fn, s: fn(s[0], s[1:], scale=0.5),
    "ties": lambda fn, s: fn(s[0], s[1:], method="ties", density=0.5),
    "dare": lambda fn, s: fn(s[0], s[1:], method="dare", density=0.5, seed=3),
    "dare_ties": lambda fn, s: fn(s[0], s[1:], method="dare_ties", density=0.5, seed=3),
}


def test_every_method_has_a_call():
    assert set(CALLS) == set(WEIGHT_METHODS)


@pytest.mark.parametrize("name", sorted(WEIGHT_METHODS))
def test_registered_method_fuses_tiny_models(name, states):
    method = get_weight_method(name)
    assert method.name == name and method.url.startswith("https://arxiv.org/abs/") and "et al." in method.paper
    out = CALLS[name](method.fn, states)
    check_compatible([states[0], out])  # same keys, shapes and dtypes as the members


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown weight method 'soup'; valid names: \['dare', 'dare_ties', 'greedy"):
        get_weight_method("soup")
    with pytest.raises(ValueError, match=r"weight method 'ties' is already registered"):
        _register("ties", uniform, "x", "y")
    assert WEIGHT_METHODS["ties"].options == {"method": "ties"} and WEIGHT_METHODS["ties"].search == "scale"
    with pytest.raises(dataclasses.FrozenInstanceError):
        WEIGHT_METHODS["ties"].name = "other"
    assert isinstance(WEIGHT_METHODS["dare"], WeightMethod)


def test_docstring_examples_run():
    result = doctest.testmod(W, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0
