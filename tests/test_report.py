import pytest

from hyft.report import average_curves, line_styles, plot_curves, smooth


def test_line_styles_keep_coincident_methods_apart():
    methods = ["lora", "hybrid-lora", "lora-adamw", "hybrid-lora-adamw", "mezo", "zo-lora", "ft", "prefix", "x", "y"]
    styles = line_styles(methods + ["lora"], colors=["c0", "c1", "c2"])  # fewer colours than methods
    assert list(styles) == methods  # fixed by first appearance, duplicates ignored
    assert len(set(styles.values())) == len(methods)
    # Two methods drawn on the same data must still differ in dash pattern or marker, not only in colour.
    pairs = [(a, b) for a in methods for b in methods if a < b]
    assert all(styles[a][1:] != styles[b][1:] for a, b in pairs)


def test_average_curves_uses_common_steps_and_smooth_is_trailing():
    curves = [[(0, 0.0, 0.5), (10, 5.0, 0.7)], [(0, 0.0, 0.7), (10, 7.0, 0.9), (20, 9.0, 1.0)]]
    pts = average_curves(curves)
    assert [p[0] for p in pts] == [0, 10]
    assert pts[1][1] == pytest.approx(6.0) and pts[1][2] == pytest.approx(0.8)
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_plot_curves_writes_a_png(tmp_path):
    same = [[(0, 0.0, 0.6), (10, 3.0, 0.8)]]
    loss = [[(1, 0.3, 1.2), (2, 0.6, 0.9), (3, 0.9, 0.7)]]
    path = plot_curves(tmp_path / "p" / "t.png", "t", {"a": same, "b": same}, {"a": loss, "b": loss},
                       target=0.75, smooth_window=2)  # fmt: skip
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
