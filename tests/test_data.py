"""The training split's order (data.py)."""

from hyft.data import DataOrder


def test_random_reshuffling_visits_every_example_once_per_epoch():
    order = DataOrder(10, seed=3)
    seen = [order.next(4) for _ in range(5)]  # 20 draws = 2 epochs
    flat = [i for s in seen for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]
    again = DataOrder(10, seed=3)
    again.load_state_dict({"epoch": 1, "position": 2})
    assert again.next(8) == flat[12:20]
