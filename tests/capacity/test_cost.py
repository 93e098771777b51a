from capacity.cost import BytesPerTokenEstimator, OutputEstimator, RequestCost


def test_bytes_per_token_estimate_rounds_up():
    est = BytesPerTokenEstimator(bytes_per_token=4.0)
    assert est.estimate(9) == 3
    assert est.estimate(0) == 1


def test_bytes_per_token_recalibrates_from_reported_usage():
    est = BytesPerTokenEstimator(bytes_per_token=4.0, alpha=0.5)
    for _ in range(30):
        est.observe(prompt_bytes=2000, prompt_tokens=1000)  # 2 bytes per token, e.g. CJK text
    assert abs(est.bytes_per_token - 2.0) < 0.01
    assert est.estimate(2000) == 1000


def test_bytes_per_token_ignores_empty_and_clamps_outliers():
    est = BytesPerTokenEstimator(bytes_per_token=4.0, alpha=1.0, floor=1.0, ceiling=16.0)
    est.observe(100, 0)
    assert est.bytes_per_token == 4.0
    est.observe(10_000, 1)
    assert est.bytes_per_token == 16.0


def test_output_estimate_is_running_mean_capped_by_max_tokens():
    est = OutputEstimator(prior_tokens=100, alpha=0.5)
    est.observe(300)
    assert est.mean == 200
    assert est.estimate(max_tokens=1000) == 200
    assert est.estimate(max_tokens=50) == 50


def test_request_cost_kv_is_prompt_plus_max_tokens():
    cost = RequestCost(prompt_tokens=100, max_tokens=400, expected_output=50, w_in=0.5, w_out=1.0)
    assert cost.kv == 500
    assert cost.concurrency == 1
    assert cost.throughput == 0.5 * 100 + 50
