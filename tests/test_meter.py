"""Live figures inside a stage (azr/meter.py): the live line, the log lines, and the hooks that feed them."""

from __future__ import annotations

import logging

from azr import meter
from azr.meter import Meter


def test_a_meter_publishes_its_line_and_logs_it_at_the_end(caplog, monkeypatch):
    monkeypatch.setattr(meter, "LOG_SECONDS", 3600.0)  # no periodic line within the test
    m = Meter("propose", 3, total=16, unit="fields")
    with caplog.at_level(logging.INFO, logger="azr.meter"):
        m.generation_callback()(4, 16, 200)
        assert meter.latest().startswith("propose 3: 4/16 fields, ") and "tokens/s" in meter.latest()
        assert not caplog.records  # between log intervals only the live line changes
        m.finish()
    assert meter.latest() == ""
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["propose 3: 4/16 fields"]


def test_a_meter_logs_periodically_while_the_stage_runs(caplog, monkeypatch):
    monkeypatch.setattr(meter, "LOG_SECONDS", 0.0)
    m = Meter("train", 1, total=0, unit="micro-batches")
    with caplog.at_level(logging.INFO, logger="azr.meter"):
        for done in (1, 2, 3):
            m.micro_batch_callback()(done, 3)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [f"train 1: {d}/3 micro-batches" for d in (1, 2, 3)]


def test_train_step_reports_every_micro_batch():
    from azr import rl
    from azr.config import TrainingConfig
    from tests.test_rl import make_samples, tiny_model

    model, tokenizer = tiny_model()
    samples = make_samples(model, tokenizer, [1.0, -1.0, 0.5, -0.5, 1.0])
    cfg = TrainingConfig(learning_rate=1e-3, micro_batch_size=2)
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    seen = []
    rl.train_step(model, optimizer, scheduler, samples, cfg, progress=lambda done, total: seen.append((done, total)))
    total = seen[-1][1]
    assert total >= 3 and seen == [(d, total) for d in range(1, total + 1)]
