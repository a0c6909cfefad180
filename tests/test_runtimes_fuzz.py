"""Fuzz ``generate``: any input gives a correct-shape uint8 image or an InputError, exactly as an oracle predicts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from runtime_artifacts import IGNORE_ID, INPUT_SIZE, NUM_CLASSES, shared_artifacts

from runtimes import InputError, load_predictor

DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
          np.float16, np.float32, np.float64, np.bool_, np.complex64]
SHAPES = st.one_of(
    st.sampled_from([INPUT_SIZE, (1, *INPUT_SIZE), (3, *INPUT_SIZE), (6, *INPUT_SIZE), (0, *INPUT_SIZE), (32, 0), (31, 32),
                     (1, 1, *INPUT_SIZE), (), (32,)]),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40),
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    return shared_artifacts(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def predictor(artifacts):
    with load_predictor(artifacts["onnx"], device="cpu", intra_op_num_threads=1) as p:
        yield p


INT_DTYPES = [d for d in DTYPES if np.dtype(d).kind in "iu"]
NEAR_VALID_SHAPES = st.one_of(st.just(INPUT_SIZE), st.integers(1, 6).map(lambda n: (n, *INPUT_SIZE)),
                              hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=40))


@st.composite
def label_maps(draw):
    """Half near-valid maps (integer ids, mostly the right size), half anything (dtype, shape, values)."""
    near_valid = draw(st.booleans())
    dtype = np.dtype(draw(st.sampled_from(INT_DTYPES if near_valid else DTYPES)))
    shape = draw(NEAR_VALID_SHAPES if near_valid else SHAPES)
    if dtype.kind not in "iu":
        return draw(hnp.arrays(dtype, shape))
    info = np.iinfo(dtype)
    special = [IGNORE_ID] if near_valid else [IGNORE_ID, -1, NUM_CLASSES, int(info.max)]
    # mostly valid ids; arrays() fills most pixels with `fill` and draws the others from `elements`
    elements = st.one_of(st.integers(0, NUM_CLASSES - 1), st.sampled_from(special)).filter(lambda v: info.min <= v <= info.max)
    return draw(hnp.arrays(dtype, shape, elements=elements, fill=st.integers(0, NUM_CLASSES - 1)))


SEEDS = st.one_of(st.none(), st.integers(0, 2**40), st.integers(-2, -1), st.lists(st.integers(0, 9), max_size=7))


def expected_ok(labels: np.ndarray, seed, resize: bool) -> bool:
    """An oracle written from the documented rules, independently of the predictor's code."""
    if labels.dtype.kind not in "iu" or labels.ndim not in (2, 3) or labels.size == 0:
        return False
    ids = labels.astype(np.float64)  # exact for every value drawn here
    if not (((ids >= 0) & (ids < NUM_CLASSES)) | (ids == IGNORE_ID)).all():
        return False
    if labels.shape[-2:] != INPUT_SIZE and not resize:
        return False
    n = labels.shape[0] if labels.ndim == 3 else 1
    if isinstance(seed, int):
        return seed >= 0
    return seed is None or len(seed) == n


@SETTINGS
@given(labels=label_maps(), seed=SEEDS, resize=st.booleans())
def test_generate_returns_an_image_or_raises_input_error(predictor, labels, seed, resize):
    ok = expected_ok(labels, seed, resize)
    event("valid" if ok else "invalid")
    try:
        images = predictor.generate(labels, seed=seed, resize=resize)
    except InputError:
        assert not ok, "refused a valid input"
        return
    assert ok, "accepted an invalid input"
    expected_shape = (*INPUT_SIZE, 3) if labels.ndim == 2 else (labels.shape[0], *INPUT_SIZE, 3)
    assert images.dtype == np.uint8 and images.shape == expected_shape


@st.composite
def noises(draw):
    shape = draw(st.sampled_from([(4, 8), (1, 4, 8), (2, 4, 8), (8, 4), (4,)]))
    if draw(st.booleans()):
        return draw(hnp.arrays(np.int32, shape, elements=st.integers(-3, 3)))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    elements = st.floats(-1e3, 1e3, width=16) | st.sampled_from([float("nan"), float("inf"), float("-inf")])
    return draw(hnp.arrays(dtype, shape, elements=elements))


@SETTINGS
@given(noise=noises(), batched=st.booleans())
def test_explicit_noise_is_checked(predictor, noise, batched):
    labels = np.zeros((2, *INPUT_SIZE) if batched else INPUT_SIZE, dtype=np.int32)
    shape_ok = noise.shape == ((2, 4, 8) if batched else (4, 8)) or (not batched and noise.shape == (1, 4, 8))
    ok = shape_ok and noise.dtype.kind == "f" and bool(np.isfinite(noise).all())
    try:
        images = predictor.generate(labels, noise=noise)
    except InputError:
        assert not ok
        return
    assert ok and images.shape == ((2, *INPUT_SIZE, 3) if batched else (*INPUT_SIZE, 3))


@SETTINGS
@given(colors=hnp.arrays(np.uint8, (*INPUT_SIZE, 3), elements=st.integers(0, 255)), use_palette=st.booleans(),
       keep=st.sampled_from([1.0, 0.999]))
def test_rgb_maps_decode_or_raise(predictor, colors, use_palette, keep):
    from PIL import Image

    palette = np.array([c.color for c in predictor.classes] + [[0, 0, 0]], dtype=np.uint8)  # black = ignore id
    if use_palette:  # a palette map with a few pixels possibly off the palette
        ids = np.random.default_rng(int(colors.sum())).integers(0, len(palette), INPUT_SIZE)
        colors = np.where(np.random.default_rng(1).random((*INPUT_SIZE, 1)) < keep, palette[ids], colors)
    known = (colors[:, :, None, :] == palette[None, None]).all(-1).any(-1).all()
    event("decodable" if known else "off-palette")
    try:
        image = predictor.generate(Image.fromarray(colors, mode="RGB"), seed=0)
    except InputError:
        assert not known
        return
    assert known and image.shape == (*INPUT_SIZE, 3)
