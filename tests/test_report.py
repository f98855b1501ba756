"""The results report: `dvc exp show --json` -> mean ± std table, and paired per-user tests."""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import wilcoxon

from deepfm.results import ReportError, cli
from deepfm.results.rendering import metric_label, render_markdown
from deepfm.results.runs import parse_exp_show, select_runs
from deepfm.results.statistics import (
    DEFAULT_METRICS,
    align_users,
    bootstrap_mean_ci,
    mean_over_runs,
    paired_test,
    paired_user_scores,
    per_user_scores,
    summarize,
    wilcoxon_p,
)

# Real `dvc exp show --json` output of DVC 3.67.1, trimmed (no deps / outs / meta, shorter
# metric files, executor.local cut to returncode). Made in a throwaway repo whose one stage
# writes the three metric files of this pipeline from params (model, seed, train.epochs):
# test full_ndcg@10 = {deepfm: 0.10, itempop: 0.05, fm: 0.08} + 0.02 (seed - 1)
# + 0.01 (epochs - 3); seconds_per_epoch = 10 + seed. Then, on baseline commit `main` (seed 42):
#   dvc exp run --queue -S model=deepfm -S seed=1,2,3    (+ itempop seed 1,2, fm seed 1)
#   dvc exp run --queue -S 'model=[1]' -S seed=5          (fails: techy-drab)
#   dvc queue start
#   dvc exp run -S model=deepfm -S seed=1 -S train.epochs=4   (surly-shes, a newer deepfm seed 1)
#   dvc exp run --queue -S model=itempop -S seed=3        (left queued: jazzy-syce)
# The failed run still carries the metrics of the workspace it was queued from (0.92).
EXP_SHOW_JSON = """
[
  {
    "rev": "workspace",
    "name": null,
    "data": {
      "rev": "workspace",
      "timestamp": null,
      "params": {"params.yaml": {"data": {"seed": 1, "model": "deepfm", "train": {"epochs": 4}}}},
      "metrics": {
        "metrics/eval.json": {
          "data": {
            "val": {"full_ndcg@10": 0.111},
            "test": {
              "ndcg@10": 0.41,
              "hr@10": 0.62,
              "auc": 0.889,
              "logloss": 0.41,
              "full_ndcg@10": 0.11,
              "full_hr@10": 0.22,
              "users": 942
            },
            "model": "deepfm",
            "best_epoch": 4,
            "parameters": 123456
          }
        },
        "metrics/train/metrics.json": {"data": {"step": 3, "train": {"loss": 0.5}}},
        "metrics/timing/summary.json": {
          "data": {
            "model": "deepfm",
            "parameters": 123456,
            "epochs_run": 4,
            "seconds_per_epoch": 11.0,
            "threads": 2,
            "device": "cpu"
          }
        }
      }
    },
    "error": null,
    "experiments": null
  },
  {
    "rev": "5dbe136866117790e7c69444ba553faab3b78de2",
    "name": "main",
    "data": {
      "rev": "5dbe136866117790e7c69444ba553faab3b78de2",
      "timestamp": "2026-11-27T22:36:24",
      "params": {"params.yaml": {"data": {"seed": 42, "model": "deepfm", "train": {"epochs": 3}}}},
      "metrics": {
        "metrics/eval.json": {
          "data": {
            "val": {"full_ndcg@10": 0.921},
            "test": {
              "ndcg@10": 1.22,
              "hr@10": 2.24,
              "auc": 0.808,
              "logloss": 1.22,
              "full_ndcg@10": 0.92,
              "full_hr@10": 1.84,
              "users": 942
            },
            "model": "deepfm",
            "best_epoch": 3,
            "parameters": 123456
          }
        },
        "metrics/train/metrics.json": {"data": {"step": 2, "train": {"loss": 0.5}}},
        "metrics/timing/summary.json": {
          "data": {
            "model": "deepfm",
            "parameters": 123456,
            "epochs_run": 3,
            "seconds_per_epoch": 52.0,
            "threads": 2,
            "device": "cpu"
          }
        }
      }
    },
    "error": null,
    "experiments": [
      {
        "revs": [
          {
            "rev": "9c587a118d47489bd839e1aaaf03fd504d5f3408",
            "name": "surly-shes",
            "data": {
              "rev": "9c587a118d47489bd839e1aaaf03fd504d5f3408",
              "timestamp": "2026-11-27T22:37:11",
              "params": {
                "params.yaml": {"data": {"seed": 1, "model": "deepfm", "train": {"epochs": 4}}}
              },
              "metrics": {
                "metrics/eval.json": {
                  "data": {
                    "val": {"full_ndcg@10": 0.111},
                    "test": {
                      "ndcg@10": 0.41,
                      "hr@10": 0.62,
                      "auc": 0.889,
                      "logloss": 0.41,
                      "full_ndcg@10": 0.11,
                      "full_hr@10": 0.22,
                      "users": 942
                    },
                    "model": "deepfm",
                    "best_epoch": 4,
                    "parameters": 123456
                  }
                },
                "metrics/train/metrics.json": {"data": {"step": 3, "train": {"loss": 0.5}}},
                "metrics/timing/summary.json": {
                  "data": {
                    "model": "deepfm",
                    "parameters": 123456,
                    "epochs_run": 4,
                    "seconds_per_epoch": 11.0,
                    "threads": 2,
                    "device": "cpu"
                  }
                }
              }
            },
            "error": null,
            "experiments": null
          }
        ],
        "executor": null,
        "name": "surly-shes"
      },
      {
        "revs": [
          {
            "rev": "699e6d5d0eafb60f468a70d27e85ba4fe72cb061",
            "name": "molar-gear",
            "data": {
              "rev": "699e6d5d0eafb60f468a70d27e85ba4fe72cb061",
              "timestamp": "2026-11-27T22:36:53",
              "params": {
                "params.yaml": {"data": {"seed": 1, "model": "fm", "train": {"epochs": 3}}}
              },
              "metrics": {
                "metrics/eval.json": {
                  "data": {
                    "val": {"full_ndcg@10": 0.081},
                    "test": {
                      "ndcg@10": 0.38,
                      "hr@10": 0.56,
                      "auc": 0.892,
                      "logloss": 0.38,
                      "full_ndcg@10": 0.08,
                      "full_hr@10": 0.16,
                      "users": 942
                    },
                    "model": "fm",
                    "best_epoch": 3,
                    "parameters": 50000
                  }
                },
                "metrics/train/metrics.json": {"data": {"step": 2, "train": {"loss": 0.5}}},
                "metrics/timing/summary.json": {
                  "data": {
                    "model": "fm",
                    "parameters": 50000,
                    "epochs_run": 3,
                    "seconds_per_epoch": 11.0,
                    "threads": 2,
                    "device": "cpu"
                  }
                }
              }
            },
            "error": null,
            "experiments": null
          }
        ],
        "executor": {"state": "success", "name": "dvc-task", "local": {"returncode": 0}},
        "name": "molar-gear"
      },
      {
        "revs": [
          {
            "rev": "3fcfca8d3c53a971f92655d7cd1aeaf814017df5",
            "name": "lardy-ship",
            "data": {
              "rev": "3fcfca8d3c53a971f92655d7cd1aeaf814017df5",
              "timestamp": "2026-11-27T22:36:49",
              "params": {
                "params.yaml": {"data": {"seed": 2, "model": "itempop", "train": {"epochs": 3}}}
              },
              "metrics": {
                "metrics/eval.json": {
                  "data": {
                    "val": {"full_ndcg@10": 0.071},
                    "test": {
                      "ndcg@10": 0.37,
                      "hr@10": 0.54,
                      "auc": 0.893,
                      "logloss": 0.37,
                      "full_ndcg@10": 0.07,
                      "full_hr@10": 0.14,
                      "users": 942
                    },
                    "model": "itempop",
                    "best_epoch": 3,
                    "parameters": 1682
                  }
                },
                "metrics/train/metrics.json": {"data": {"step": 2, "train": {"loss": 0.5}}},
                "metrics/timing/summary.json": {
                  "data": {
                    "model": "itempop",
                    "parameters": 1682,
                    "epochs_run": 3,
                    "seconds_per_epoch": 12.0,
                    "threads": 2,
                    "device": "cpu"
                  }
                }
              }
            },
            "error": null,
            "experiments": null
          }
        ],
        "executor": {"state": "success", "name": "dvc-task", "local": {"returncode": 0}},
        "name": "lardy-ship"
      },
      {
        "revs": [
          {
            "rev": "304b77129f19af8f17ff191b11c9727d1d938a62",
            "name": "naval-grub",
            "data": {
              "rev": "304b77129f19af8f17ff191b11c9727d1d938a62",
              "timestamp": "2026-11-27T22:36:45",
              "params": {
                "params.yaml": {"data": {"seed": 1, "model": "itempop", "train": {"epochs": 3}}}
              },
              "metrics": {
                "metrics/eval.json": {
                  "data": {
                    "val": {"full_ndcg@10": 0.051},
                    "test": {
                      "ndcg@10": 0.35,
                      "hr@10": 0.5,
                      "auc": 0.895,
                      "logloss": 0.35,
                      "full_ndcg@10": 0.05,
                      "full_hr@10": 0.1,
                      "users": 942
                    },
                    "model": "itempop",
                    "best_epoch": 3,
                    "parameters": 1682
                  }
                },
                "metrics/train/metrics.json": {"data": {"step": 2, "train": {"loss": 0.5}}},
                "metrics/timing/summary.json": {
                  "data": {
                    "model": "itempop",
                    "parameters": 1682,
                    "epochs_run": 3,
                    "seconds_per_epoch": 11.0,
                    "threads": 2,
                    "device": "cpu"
                  }
                }
              }
            },
            "error": null,
            "experiments": null
          }
        ],
        "executor": {"state": "success", "name": "dvc-task", "local": {"returncode": 0}},
        "name": "naval-grub"
      },
      {
        "revs": [
          {
            "rev": "f6f878ad55c9debe5ba775fbfe815fcd7d4ca071",
            "name": "hulky-rams",
            "data": {
              "rev": "f6f878ad55c9debe5ba775fbfe815fcd7d4ca071",
              "timestamp": "2026-11-27T22:36:42",
              "params": {
                "params.yaml": {"data": {"seed": 3, "model": "deepfm", "train": {"epochs": 3}}}
              },
              "metrics": {
                "metrics/eval.json": {
                  "data": {
                    "val": {"full_ndcg@10": 0.141},
                    "test": {
                      "ndcg@10": 0.44,
                      "hr@10": 0.68,
                      "auc": 0.886,
                      "logloss": 0.44,
                      "full_ndcg@10": 0.14,
                      "full_hr@10": 0.28,
                      "users": 942
                    },
                    "model": "deepfm",
                    "best_epoch": 3,
                    "parameters": 123456
                  }
                },
                "metrics/train/metrics.json": {"data": {"step": 2, "train": {"loss": 0.5}}},
                "metrics/timing/summary.json": {
                  "data": {
                    "model": "deepfm",
                    "parameters": 123456,
                    "epochs_run": 3,
                    "seconds_per_epoch": 13.0,
                    "threads": 2,
                    "device": "cpu"
                  }
                }
              }
            },
            "error": null,
            "experiments": null
          }
        ],
        "executor": {"state": "success", "name": "dvc-task", "local": {"returncode": 0}},
        "name": "hulky-rams"
      },
      {
        "revs": [
          {
            "rev": "912675f74761ccf5e60170ec2fd82fbed6e7d669",
            "name": "saved-barb",
            "data": {
              "rev": "912675f74761ccf5e60170ec2fd82fbed6e7d669",
              "timestamp": "2026-11-27T22:36:39",
              "params": {
                "params.yaml": {"data": {"seed": 2, "model": "deepfm", "train": {"epochs": 3}}}
              },
              "metrics": {
                "metrics/eval.json": {
                  "data": {
                    "val": {"full_ndcg@10": 0.121},
                    "test": {
                      "ndcg@10": 0.42,
                      "hr@10": 0.64,
                      "auc": 0.888,
                      "logloss": 0.42,
                      "full_ndcg@10": 0.12,
                      "full_hr@10": 0.24,
                      "users": 942
                    },
                    "model": "deepfm",
                    "best_epoch": 3,
                    "parameters": 123456
                  }
                },
                "metrics/train/metrics.json": {"data": {"step": 2, "train": {"loss": 0.5}}},
                "metrics/timing/summary.json": {
                  "data": {
                    "model": "deepfm",
                    "parameters": 123456,
                    "epochs_run": 3,
                    "seconds_per_epoch": 12.0,
                    "threads": 2,
                    "device": "cpu"
                  }
                }
              }
            },
            "error": null,
            "experiments": null
          }
        ],
        "executor": {"state": "success", "name": "dvc-task", "local": {"returncode": 0}},
        "name": "saved-barb"
      },
      {
        "revs": [
          {
            "rev": "561efff76f096784e756fa55c7f0ee84d05e48a8",
            "name": "salic-vacs",
            "data": {
              "rev": "561efff76f096784e756fa55c7f0ee84d05e48a8",
              "timestamp": "2026-11-27T22:36:35",
              "params": {
                "params.yaml": {"data": {"seed": 1, "model": "deepfm", "train": {"epochs": 3}}}
              },
              "metrics": {
                "metrics/eval.json": {
                  "data": {
                    "val": {"full_ndcg@10": 0.101},
                    "test": {
                      "ndcg@10": 0.4,
                      "hr@10": 0.6,
                      "auc": 0.89,
                      "logloss": 0.4,
                      "full_ndcg@10": 0.1,
                      "full_hr@10": 0.2,
                      "users": 942
                    },
                    "model": "deepfm",
                    "best_epoch": 3,
                    "parameters": 123456
                  }
                },
                "metrics/train/metrics.json": {"data": {"step": 2, "train": {"loss": 0.5}}},
                "metrics/timing/summary.json": {
                  "data": {
                    "model": "deepfm",
                    "parameters": 123456,
                    "epochs_run": 3,
                    "seconds_per_epoch": 11.0,
                    "threads": 2,
                    "device": "cpu"
                  }
                }
              }
            },
            "error": null,
            "experiments": null
          }
        ],
        "executor": {"state": "success", "name": "dvc-task", "local": {"returncode": 0}},
        "name": "salic-vacs"
      },
      {
        "revs": [
          {
            "rev": "4c7c41b33de859bdd80cd09b6cc809d86ad7826d",
            "name": "jazzy-syce",
            "data": {
              "rev": "4c7c41b33de859bdd80cd09b6cc809d86ad7826d",
              "timestamp": "2026-11-27T22:37:13",
              "params": {
                "params.yaml": {"data": {"seed": 3, "model": "itempop", "train": {"epochs": 4}}}
              },
              "metrics": {}
            },
            "error": null,
            "experiments": null
          }
        ],
        "executor": {"state": "queued", "name": "dvc-task", "local": {"returncode": null}},
        "name": "jazzy-syce"
      },
      {
        "revs": [
          {
            "rev": "78d6c36e930b326922e9bebb8299edfb16a61415",
            "name": "techy-drab",
            "data": {
              "rev": "78d6c36e930b326922e9bebb8299edfb16a61415",
              "timestamp": "2026-11-27T22:36:28",
              "params": {
                "params.yaml": {"data": {"seed": 5, "model": [1], "train": {"epochs": 3}}}
              },
              "metrics": {
                "metrics/eval.json": {
                  "data": {
                    "val": {"full_ndcg@10": 0.921},
                    "test": {
                      "ndcg@10": 1.22,
                      "hr@10": 2.24,
                      "auc": 0.808,
                      "logloss": 1.22,
                      "full_ndcg@10": 0.92,
                      "full_hr@10": 1.84,
                      "users": 942
                    },
                    "model": "deepfm",
                    "best_epoch": 3,
                    "parameters": 123456
                  }
                },
                "metrics/train/metrics.json": {"data": {"step": 2, "train": {"loss": 0.5}}},
                "metrics/timing/summary.json": {
                  "data": {
                    "model": "deepfm",
                    "parameters": 123456,
                    "epochs_run": 3,
                    "seconds_per_epoch": 52.0,
                    "threads": 2,
                    "device": "cpu"
                  }
                }
              }
            },
            "error": {"msg": "Experiment run failed", "type": ""},
            "experiments": null
          }
        ],
        "executor": {"state": "failed", "name": null, "local": {"returncode": 255}},
        "name": "techy-drab"
      }
    ]
  }
]"""


def raises_exactly(message):
    """pytest.raises for a ReportError whose message is exactly `message` (not just contains
    it): the messages tell the user what is wrong and how to fix it, so their text matters."""
    return pytest.raises(ReportError, match=rf"^{re.escape(message)}\Z")


_HINT = (
    "compare runs evaluated on the same dataset and split (same `dataset`, `data` and `split` "
    "params, same data/split/)"
)


@pytest.fixture
def exp_show():
    return json.loads(EXP_SHOW_JSON)


@pytest.fixture
def runs(exp_show):
    return select_runs(parse_exp_show(exp_show)).runs


# --------------------------------------------------------------------------- parsing


def test_parse_exp_show_one_row_per_entry(exp_show):
    rows = parse_exp_show(exp_show).set_index("name")
    assert list(rows.index[:2]) == ["workspace", "main"]
    assert rows.loc["workspace", "kind"] == "workspace"
    assert rows.loc["main", "kind"] == "baseline"
    assert (rows["kind"].iloc[2:] == "experiment").all()
    assert rows.loc["jazzy-syce", "status"] == "queued"
    assert rows.loc["techy-drab", "status"] == "failed"
    assert rows.loc["hulky-rams", "status"] == "success"
    hulky = rows.loc["hulky-rams"]
    assert hulky["rev"] == "f6f878ad55c9debe5ba775fbfe815fcd7d4ca071"
    assert hulky["baseline"] == rows.loc["main", "rev"]
    assert (hulky["model"], hulky["seed"]) == ("deepfm", 3)
    assert hulky["test.full_ndcg@10"] == 0.14
    assert hulky["val.full_ndcg@10"] == 0.141
    assert hulky["parameters"] == 123456
    assert hulky["seconds_per_epoch"] == 13.0
    assert hulky["epochs_run"] == 3
    assert hulky["train.step"] == 2
    assert hulky["param.train.epochs"] == 3


def test_select_runs_defaults(exp_show):
    selection = select_runs(parse_exp_show(exp_show))
    runs = selection.runs
    assert list(zip(runs["model"], runs["seed"], strict=True)) == [
        ("deepfm", 1), ("deepfm", 2), ("deepfm", 3), ("fm", 1), ("itempop", 1), ("itempop", 2),
    ]  # fmt: skip
    assert runs.loc[0, "name"] == "surly-shes"  # the newest deepfm seed 1
    assert selection.notes == [
        "skipped 1 failed run(s): techy-drab",
        "skipped 1 queued run(s): jazzy-syce",
        "deepfm seed 1: 2 runs, kept the newest (surly-shes), dropped salic-vacs",
        "warning: runs of deepfm differ in train.epochs {3, 4}",
    ]


def test_select_runs_where_a_param_has_a_value(exp_show):
    rows = parse_exp_show(exp_show)
    runs = select_runs(rows, where={"train.epochs": "4"}).runs
    assert set(runs["param.train.epochs"]) == {4} and len(runs) < len(select_runs(rows).runs)
    assert select_runs(rows, where={"train.epochs": "7"}).runs.empty
    with pytest.raises(ReportError, match=r"no run has a param 'split\.tie_break'"):
        select_runs(rows, where={"split.tie_break": "random"})


def test_select_runs_with_baseline_and_workspace(exp_show):
    selection = select_runs(
        parse_exp_show(exp_show), include_baselines=True, include_workspace=True
    )
    deepfm = selection.runs[selection.runs["model"] == "deepfm"]
    assert list(deepfm["seed"]) == [1, 2, 3, 42]
    assert deepfm.iloc[0]["name"] == "workspace"  # no timestamp: newest
    assert "dropped surly-shes, salic-vacs" in selection.notes[2]


def test_select_runs_nothing_finished(exp_show):
    only_queued = [exp_show[0], {**exp_show[1], "experiments": exp_show[1]["experiments"][-2:]}]
    selection = select_runs(parse_exp_show(only_queued))
    assert selection.runs.empty
    assert selection.notes == [
        "skipped 1 failed run(s): techy-drab",
        "skipped 1 queued run(s): jazzy-syce",
    ]


# --------------------------------------------------------------------------- the table


def test_summarize_mean_std_by_hand(runs):
    summary = summarize(runs)
    t = summary.table
    assert list(t.index) == ["deepfm", "fm", "itempop"]  # by test full_ndcg@10, descending
    assert list(t["n"]) == [3, 1, 2]
    assert list(t["seeds"]) == ["1,2,3", "1", "1,2"]
    assert list(t["parameters"]) == [123456, 50000, 1682]
    assert list(t["seconds_per_epoch"]) == pytest.approx([12.0, 11.0, 11.5])
    # deepfm: 0.11 (seed 1, epochs 4), 0.12, 0.14 -> mean 0.37 / 3; deviations -1/300, -4/300
    # ... i.e. squares (4^2 + 1^2 + 5^2) / 300^2 = 42 / 90000, / (3 - 1) -> std sqrt(21) / 300
    assert t.loc["deepfm", "full_ndcg@10 mean"] == pytest.approx(0.37 / 3)
    assert t.loc["deepfm", "full_ndcg@10 std"] == pytest.approx(math.sqrt(21) / 300)
    # itempop: 0.05, 0.07 -> 0.06 ± sqrt((0.01^2 + 0.01^2) / 1) = 0.01 sqrt(2)
    assert t.loc["itempop", "full_ndcg@10 mean"] == pytest.approx(0.06)
    assert t.loc["itempop", "full_ndcg@10 std"] == pytest.approx(0.01 * math.sqrt(2))
    assert t.loc["itempop", "full_hr@10 std"] == pytest.approx(0.02 * math.sqrt(2))
    assert t.loc["itempop", "auc mean"] == pytest.approx((0.895 + 0.893) / 2)
    # one seed: mean is the value, no std
    assert t.loc["fm", "logloss mean"] == pytest.approx(0.38)
    assert math.isnan(t.loc["fm", "logloss std"])
    assert summary.metrics == ("full_ndcg@10", "full_hr@10", "ndcg@10", "hr@10", "auc", "logloss")


def test_summarize_sorting_and_metric_errors(runs):
    by_logloss = summarize(runs, ["logloss"], sort_by="logloss").table
    assert list(by_logloss.index) == ["itempop", "fm", "deepfm"]  # lower is better
    assert list(summarize(runs, ["auc"]).table.index) == ["deepfm", "fm", "itempop"]
    with pytest.raises(ReportError, match="ndcg@99 not in the 'test' split"):
        summarize(runs, ["ndcg@99"])
    with pytest.raises(ReportError, match="no runs"):
        summarize(runs.iloc[:0])


def test_summarize_error_messages_in_full(runs):
    with raises_exactly("no runs to summarize"):
        summarize(runs.iloc[:0])
    with raises_exactly("no metrics asked for"):
        summarize(runs, [])
    # every missing metric is named, and every metric the split does have is offered (sorted)
    with raises_exactly(
        "metric(s) ndcg@99, mrr not in the 'test' split of the eval metrics; available: auc, "
        "full_hr@10, full_ndcg@10, hr@10, logloss, ndcg@10, users"
    ):
        summarize(runs, ["ndcg@99", "auc", "mrr"])
    with raises_exactly(
        "metric(s) auc not in the 'valid' split of the eval metrics; available: none"
    ):
        summarize(runs, ["auc"], split="valid")  # no `valid.*` column at all


def test_summarize_sorts_by_the_first_metric_when_sort_by_is_absent(runs):
    # mrr is not in the runs: sort by full_ndcg@10 (descending), not by the next metric, logloss
    # (ascending, which would put itempop first)
    summary = summarize(runs, ["full_ndcg@10", "logloss"], sort_by="mrr")
    assert summary.sort_by == "full_ndcg@10"
    assert list(summary.table.index) == ["deepfm", "fm", "itempop"]


def test_summarize_messy_runs_by_hand():
    # Runs not from select_runs: non-numeric values (e.g. a string in a metrics file) count as
    # missing instead of crashing, seeds need not be integers, a model may lack every parameter
    # count / user count, and models that tie on `sort_by` keep the order in which they first
    # appear (zeta before alpha, although alpha sorts first by name).
    runs = pd.DataFrame(
        {
            "model": ["zeta", "zeta", "alpha", "mid", "alpha"],
            "seed": [2.5, 1.0, "abc", 1, 3],
            "parameters": [100, 200, "n/a", 300, None],
            "seconds_per_epoch": [10.0, "slow", 12.0, 8.0, 14.0],
            "test.hr@10": [0.5, "bad", 0.5, 0.7, None],
            "test.auc": [0.8, 0.6, 0.9, 0.7, 0.9],
            "test.users": [50, "?", None, 40, None],
        }
    )
    t = summarize(runs, ["hr@10", "auc"], sort_by="hr@10").table
    assert list(t.index) == ["mid", "zeta", "alpha"]  # hr@10 0.7, then the tie at 0.5
    assert list(t["n"]) == [1, 2, 2]
    assert list(t["seeds"]) == ["1", "1,2.5", "3"]  # sorted; integral floats print as ints
    assert list(t["parameters"].iloc[:2]) == [300, 200] and math.isnan(t.loc["alpha", "parameters"])
    assert list(t["parameters_vary"]) == [False, True, False]  # zeta: 100 and 200
    assert list(t["seconds_per_epoch"]) == [8.0, 10.0, 13.0]
    assert list(t["users"].iloc[:2]) == [40, 50] and math.isnan(t.loc["alpha", "users"])
    # hr@10: one number per model; auc: zeta 0.8, 0.6 -> 0.7 ± sqrt(2 * 0.1^2 / 1)
    assert list(t["hr@10 mean"]) == [0.7, 0.5, 0.5]
    assert list(t["hr@10 n"]) == [1, 1, 1]
    assert t["hr@10 std"].isna().all()
    assert list(t["auc n"]) == [1, 2, 2]
    assert list(t["auc mean"]) == pytest.approx([0.7, 0.7, 0.9])
    assert t.loc["zeta", "auc std"] == pytest.approx(0.1 * math.sqrt(2))
    assert t.loc["alpha", "auc std"] == 0.0
    # no `test.users` column at all: users unknown, the rest unchanged
    without_users = summarize(runs.drop(columns="test.users"), ["hr@10"]).table
    assert without_users["users"].isna().all()
    assert list(without_users.index) == ["mid", "zeta", "alpha"]


def test_summarize_ties_keep_the_order_of_the_runs():
    # Twelve models in a scrambled name order, three values of the sort metric: the sort is
    # stable, so each tie lists its models in input order, for higher-is-better (hr@10) and
    # lower-is-better (logloss) alike.
    names = ["k", "c", "h", "a", "l", "e", "j", "b", "g", "d", "i", "f"]
    values = [0.2, 0.1, 0.3, 0.2, 0.1, 0.3, 0.2, 0.1, 0.3, 0.2, 0.1, 0.3]
    runs = pd.DataFrame(
        {
            "model": names,
            "seed": 1,
            "parameters": 10,
            "seconds_per_epoch": 1.0,
            "test.hr@10": values,
            "test.logloss": values,
        }
    )
    by_value = {v: [n for n, w in zip(names, values, strict=True) if w == v] for v in values}
    high_first = summarize(runs, ["hr@10"], sort_by="hr@10").table
    assert list(high_first.index) == by_value[0.3] + by_value[0.2] + by_value[0.1]
    low_first = summarize(runs, ["logloss"], sort_by="logloss").table
    assert list(low_first.index) == by_value[0.1] + by_value[0.2] + by_value[0.3]


def test_render_markdown(runs):
    text = render_markdown(summarize(runs, ["full_ndcg@10", "auc", "logloss"]))
    lines = text.splitlines()
    assert lines[0] == (
        "*Split: test, 942 users. Each cell is the mean ± sample standard deviation (ddof = 1) "
        "over n seeds per model (—: one seed). Full = ranked against all items, sampled = "
        "against the fixed sampled candidates. Sorted by NDCG@10 (full).*"
    )
    assert lines[1:] == [
        "",
        "| Model | n | Params | s / epoch | NDCG@10 (full) ↑ | AUC ↑ | LogLoss ↓ |",
        "|:--|--:|--:|--:|--:|--:|--:|",
        "| deepfm | 3 | 123,456 | 12.0 | 0.1233 ± 0.0153 | 0.8877 ± 0.0015 | 0.4233 ± 0.0153 |",
        "| fm | 1 | 50,000 | 11.0 | 0.0800 ± — | 0.8920 ± — | 0.3800 ± — |",
        "| itempop | 2 | 1,682 | 11.5 | 0.0600 ± 0.0141 | 0.8940 ± 0.0014 | 0.3600 ± 0.0141 |",
    ]
    same_n = runs[runs["model"] != "fm"].groupby("model").head(2)
    assert "over n = 2 seeds per model" in render_markdown(summarize(same_n))


def test_metric_labels_and_default_columns_come_from_the_registry():
    assert DEFAULT_METRICS == ("full_ndcg@10", "full_hr@10", "ndcg@10", "hr@10", "auc", "logloss")
    labels = {
        "full_ndcg@10": "NDCG@10 (full) ↑",
        "hr@5": "HR@5 (sampled) ↑",
        "full_mrr": "MRR (full) ↑",
        "mrr": "MRR (sampled) ↑",
        "auc": "AUC ↑",
        "logloss": "LogLoss ↓",
        "users": "users ↑",  # a column that is no metric keeps its name
    }
    assert {m: metric_label(m) for m in labels} == labels
    assert metric_label("logloss", arrow=False) == "LogLoss"
    assert metric_label("full_hr@20", arrow=False) == "HR@20 (full)"


# --------------------------------------------------------------------------- paired tests


def test_paired_identical_scores():
    a = np.random.default_rng(0).random(50)
    r = paired_test(a, a.copy())
    assert (r.mean_diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert r.n_users == 50 and r.n_resamples == 10_000 and not r.significant


def test_paired_constant_shift():
    b = np.random.default_rng(1).random(40)
    r = paired_test(b + 0.25, b)
    assert r.mean_diff == pytest.approx(0.25)
    assert (r.ci_low, r.ci_high) == (pytest.approx(0.25), pytest.approx(0.25))
    assert r.p_value < 1e-6 and r.significant


def test_wilcoxon_hand_examples():
    # five positive differences: P(W- = 0) = 1 / 2^5, two-sided 2 / 32
    assert wilcoxon_p(np.array([1.0, 2, 3, 4, 5])) == pytest.approx(0.0625)
    assert wilcoxon_p(np.zeros(7)) == 1.0
    a = np.array([0.5, 0.0, 1.0, 0.3, 0.0, 0.63, 1.0, 0.2])
    b = np.array([0.3, 0.0, 0.5, 0.4, 0.1, 0.0, 0.63, 0.0])
    expected = wilcoxon(a - b, alternative="two-sided").pvalue  # zeros dropped
    assert paired_test(a, b).p_value == pytest.approx(expected)


def test_wilcoxon_normal_approximation_by_hand_in_float64():
    # 80 users (> 50: scipy uses the normal approximation), float32 differences without ties
    # or zeros. By hand: T = the smaller of the rank sums of the positive and the negative
    # differences, z = (T - n (n + 1) / 4) / sqrt(n (n + 1) (2n + 1) / 24), p = erfc(|z| / sqrt 2).
    # The p-value must be this float64 number, not one computed in float32 (off by ~1e-8).
    diff = np.random.default_rng(8).normal(0.1, 1.0, size=80).astype(np.float32)
    n = len(diff)
    assert len(set(np.abs(diff))) == n and np.all(diff != 0)  # no ties, no zeros
    ranks = np.empty(n)
    ranks[np.argsort(np.abs(diff))] = np.arange(1, n + 1)
    t = min(ranks[diff > 0].sum(), ranks[diff < 0].sum())
    z = (t - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    assert wilcoxon_p(diff) == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-12)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    diff = np.random.default_rng(2).normal(0.1, 1.0, size=300)
    low, high = bootstrap_mean_ci(diff, n_resamples=2000, seed=7)
    assert (low, high) == bootstrap_mean_ci(diff, n_resamples=2000, seed=7)
    assert low < diff.mean() < high
    se = diff.std(ddof=1) / math.sqrt(len(diff))  # percentile CI ~ mean ± 1.96 se
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)
    with pytest.raises(ReportError, match="one length"):
        paired_test(np.zeros(3), np.zeros(4))


def test_bootstrap_and_wilcoxon_edge_cases_by_hand():
    # one user, one resample: the only possible resample is that user, so the CI is its value
    assert bootstrap_mean_ci(np.array([0.123]), n_resamples=1) == (0.123, 0.123)
    # one nonzero difference: W+ is 0 or 1 with probability 1/2 each, two-sided p = 1
    assert wilcoxon_p(np.array([0.5])) == 1.0
    with raises_exactly("no users to resample"):
        bootstrap_mean_ci(np.array([]))
    with raises_exactly("no users to test"):
        wilcoxon_p(np.array([]))
    diff = np.array([0.1, -0.2, 0.3])
    for n_resamples, confidence in ((0, 0.95), (10, 0.0), (10, 1.0), (10, 1.5)):
        with raises_exactly(
            f"need resamples >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}"
        ):
            bootstrap_mean_ci(diff, n_resamples=n_resamples, confidence=confidence)


def test_bootstrap_defaults_and_float64_arithmetic():
    diff = np.random.default_rng(3).normal(0.05, 0.3, size=40)
    # the documented defaults: 10 000 resamples, 95 %, seed 0
    assert bootstrap_mean_ci(diff) == bootstrap_mean_ci(
        diff, n_resamples=10_000, confidence=0.95, seed=0
    )
    # float32 scores (e.g. read from a parquet file) are averaged in float64 like any others
    diff32 = diff.astype(np.float32)
    assert bootstrap_mean_ci(diff32) == bootstrap_mean_ci(diff32.astype(np.float64))


def test_bootstrap_ci_over_several_chunks():
    # 2 000 users: the resamples are drawn 2 000 at a time, so 5 000 take three chunks
    assert bootstrap_mean_ci(np.full(2000, 0.25), n_resamples=5000) == (0.25, 0.25)
    diff = np.random.default_rng(5).normal(0.0, 1.0, size=2000)
    low, high = bootstrap_mean_ci(diff, n_resamples=5000)
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert low < diff.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_paired_test_passes_its_settings_to_the_bootstrap():
    rng = np.random.default_rng(6)
    a, b = rng.random(30), rng.random(30)
    r = paired_test(a, b, n_resamples=500, confidence=0.8, seed=3)
    assert (r.ci_low, r.ci_high) == bootstrap_mean_ci(
        a - b, n_resamples=500, confidence=0.8, seed=3
    )
    assert (r.confidence, r.n_resamples) == (0.8, 500)
    # defaults: 10 000 resamples, 95 %, seed 0
    r = paired_test(a, b)
    assert (r.ci_low, r.ci_high) == bootstrap_mean_ci(
        a - b, n_resamples=10_000, confidence=0.95, seed=0
    )
    assert (r.confidence, r.n_resamples) == (0.95, 10_000)


def test_paired_test_means_in_float64_for_float32_scores():
    # float32 summation is off by ~1e-8 relative; the means must be the float64 ones
    rng = np.random.default_rng(4)
    a, b = rng.random(1000).astype(np.float32), rng.random(1000).astype(np.float32)
    r = paired_test(a, b)
    assert r.mean_a == pytest.approx(math.fsum(a.tolist()) / 1000, rel=1e-12, abs=0)
    assert r.mean_b == pytest.approx(math.fsum(b.tolist()) / 1000, rel=1e-12, abs=0)
    assert r.mean_diff == pytest.approx(math.fsum((a - b.astype(float)).tolist()) / 1000, rel=1e-12)


def ranks_frame(users, full_ranks, sampled_ranks=None, items=None, split="test"):
    n = len(users)
    return pd.DataFrame(
        {
            "split": [split] * n,
            "user_id": users,
            "item_id": items if items is not None else [100 + u for u in users],
            "sampled_rank": sampled_ranks if sampled_ranks is not None else full_ranks,
            "full_rank": full_ranks,
            "num_candidates": [1000] * n,
        }
    )


def test_per_user_scores_from_ranks():
    test = ranks_frame([3, 1, 2], [11, 1, 3], [1, 2, 2])
    ranks = pd.concat([test, ranks_frame([1, 2, 3], [1, 1, 1], split="val")])
    full = per_user_scores(ranks, "full_ndcg@10")
    assert list(full.index) == [1, 2, 3]  # sorted by user
    assert list(full["score"]) == pytest.approx([1.0, 0.5, 0.0])  # 1 / log2(3 + 1) = 0.5
    assert list(per_user_scores(ranks, "hr@1")["score"]) == [0.0, 0.0, 1.0]
    assert list(per_user_scores(ranks, "full_mrr")["score"]) == pytest.approx([1, 1 / 3, 1 / 11])
    assert list(per_user_scores(ranks, "full_hr@10", split="val")["score"]) == [1.0, 1.0, 1.0]
    with pytest.raises(ReportError, match="not a per-user metric"):
        per_user_scores(ranks, "auc")


def test_per_user_scores_rank_table_errors_in_full():
    # exactly the columns needed are enough; the index is named user_id
    minimal = ranks_frame([2, 1], [1, 3])[["split", "user_id", "item_id", "full_rank"]]
    scores = per_user_scores(minimal, "full_hr@1")
    assert scores.index.name == "user_id"
    assert list(scores.index) == [1, 2] and list(scores["score"]) == [0.0, 1.0]
    with raises_exactly(
        "rank table lacks column(s) ['sampled_rank']; expected the columns of the eval stage's "
        "per-user ranks"
    ):
        per_user_scores(minimal, "ndcg@10")  # sampled: needs sampled_rank
    with raises_exactly("rank table has no rows for split 'val'"):
        per_user_scores(minimal, "full_ndcg@10", split="val")
    with raises_exactly(
        "'auc' is not a per-user metric: use hr@K, ndcg@K or mrr, with a full_ prefix for full "
        "ranking (AUC and LogLoss are pooled over users, so they cannot be paired)"
    ):
        per_user_scores(minimal, "auc")


def test_rank_table_listing_a_user_twice_is_refused():
    # a user twice would count twice in every mean and misalign the pairing
    twice = ranks_frame([1, 2, 2], [1, 1, 5])
    with pytest.raises(ReportError, match="rank table lists a user twice in split 'test'"):
        per_user_scores(twice, "full_ndcg@10")
    per_user_scores(
        pd.concat([ranks_frame([1, 2], [1, 1]), ranks_frame([1, 2], [1, 1], split="val")])
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_paired_test_refuses_nan_or_infinite_scores(bad):
    a, b = np.array([0.1, 0.5, 0.2]), np.array([0.0, 0.3, 0.2])
    for x, y in ((np.r_[a, bad], np.r_[b, 0.1]), (np.r_[a, 0.1], np.r_[b, bad])):
        with raises_exactly("per-user scores contain NaN or infinity"):
            paired_test(x, y)


def test_paired_user_scores_aligns_and_averages_seeds():
    a1 = ranks_frame([1, 2, 3], [1, 3, 20])
    a2 = ranks_frame([3, 2, 1], [1, 1, 1])  # another seed, other row order
    b = ranks_frame([2, 3, 1], [1, 1, 3])
    users, sa, sb = paired_user_scores([a1, a2], b)
    assert list(users) == [1, 2, 3]
    assert list(sa) == pytest.approx([1.0, 0.75, 0.5])  # per-user mean over the two seeds
    assert list(sb) == pytest.approx([0.5, 1.0, 1.0])
    assert list(mean_over_runs([per_user_scores(a1)])["score"]) == pytest.approx([1, 0.5, 0])


def test_paired_user_scores_refuses_different_users_or_items():
    a = ranks_frame([1, 2, 3], [1, 2, 3])
    with pytest.raises(ReportError, match=r"deepfm and fm were evaluated on different users "
                       r"\(1 only in deepfm \(e\.g\. 3\)\)"):  # fmt: skip
        paired_user_scores(a, ranks_frame([1, 2], [1, 2]), label_a="deepfm", label_b="fm")
    with pytest.raises(ReportError, match="A run 1 and A run 2 were evaluated on different"):
        paired_user_scores([a, ranks_frame([1, 2, 4], [1, 2, 3])], a)
    with pytest.raises(ReportError, match="hold out different items for 1 user"):
        paired_user_scores(a, ranks_frame([1, 2, 3], [1, 2, 3], items=[101, 102, 7]))


def test_different_users_messages_in_full():
    # A has users 1-10, B has 1, 2 and 11: both sides are listed, at most five examples each
    a, b = ranks_frame(list(range(1, 11)), [1] * 10), ranks_frame([1, 2, 11], [1, 1, 1])
    expected = (
        "A and B were evaluated on different users (8 only in A (e.g. 3, 4, 5, 6, 7); "
        f"1 only in B (e.g. 11)): {_HINT}"
    )
    with raises_exactly(expected):
        paired_user_scores(a, b)
    with raises_exactly(expected):
        align_users(per_user_scores(a), per_user_scores(b))  # default labels A and B
    # the runs of one model are checked first, under that model's label
    with raises_exactly(
        "B run 1 and B run 2 were evaluated on different users (1 only in B run 2 (e.g. 11)): "
        f"{_HINT}"
    ):
        paired_user_scores(b, [ranks_frame([1, 2], [1, 1]), ranks_frame([1, 2, 11], [1, 1, 1])])
    with raises_exactly(f"A and B hold out different items for 1 user(s) (e.g. user 2): {_HINT}"):
        paired_user_scores(b, ranks_frame([1, 2, 11], [1, 1, 1], items=[101, 7, 111]))
    # mean_over_runs on its own: default label "runs"
    x = per_user_scores(ranks_frame([1, 2], [1, 1]))
    y = per_user_scores(ranks_frame([1, 3], [1, 1]))
    with raises_exactly("no runs for runs"):
        mean_over_runs([])
    with raises_exactly(
        "runs run 1 and runs run 2 were evaluated on different users (1 only in runs run 1 "
        f"(e.g. 2); 1 only in runs run 2 (e.g. 3)): {_HINT}"
    ):
        mean_over_runs([x, y])


def test_align_users_and_mean_over_runs_match_rows_by_user_id():
    # hand-made per-user frames whose rows are in different user orders: everything is matched
    # by user id; hit/miss scores as integers come back as float64
    a = pd.DataFrame({"item_id": [13, 11, 12], "score": [1, 0, 1]}, index=[3, 1, 2])
    b = pd.DataFrame({"item_id": [12, 13, 11], "score": [0, 0, 1]}, index=[2, 3, 1])
    users, sa, sb = align_users(a, b)
    assert list(users) == [1, 2, 3]
    assert sa.dtype == sb.dtype == np.float64
    assert list(sa) == [0.0, 1.0, 1.0] and list(sb) == [1.0, 0.0, 0.0]
    # item ids are only compared when both frames have them
    users, sa, sb = align_users(a, b[["score"]])
    assert list(users) == [1, 2, 3] and list(sb) == [1.0, 0.0, 0.0]
    # per-user mean over two runs (a: user 1 -> 0, 2 -> 1, 3 -> 1):
    # user 1 (1 + 0) / 2 = 0.5, user 2 (0.5 + 1) / 2 = 0.75, user 3 (0.25 + 1) / 2 = 0.625
    run2 = pd.DataFrame({"item_id": [11, 12, 13], "score": [1.0, 0.5, 0.25]}, index=[1, 2, 3])
    mean = mean_over_runs([run2, a])
    assert list(mean.index) == [1, 2, 3] and list(mean["item_id"]) == [11, 12, 13]
    assert list(mean["score"]) == [0.5, 0.75, 0.625]
    mean = mean_over_runs([a, run2.iloc[::-1]])
    assert list(mean.index) == [3, 1, 2] and list(mean["item_id"]) == [13, 11, 12]  # a's order
    assert list(mean["score"]) == [0.625, 0.5, 0.75]


def test_paired_user_scores_reads_the_asked_split():
    test_ranks = ranks_frame([1, 2], [1, 20])
    val_ranks = ranks_frame([1, 2], [20, 1], split="val")
    both = pd.concat([test_ranks, val_ranks])
    users, sa, sb = paired_user_scores(both, both, metric="full_hr@10", split="val")
    assert list(users) == [1, 2] and list(sa) == [0.0, 1.0] and list(sb) == [0.0, 1.0]
    users, sa, _ = paired_user_scores(both, both, metric="full_hr@10")
    assert list(sa) == [1.0, 0.0]


# --------------------------------------------------------------------------- the CLI


def test_cli_table(tmp_path, capsys):
    src = tmp_path / "show.json"
    src.write_text(EXP_SHOW_JSON)
    out = tmp_path / "reports" / "results.md"
    assert cli.main(["table", "--from-json", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert out.read_text() == printed.out
    assert "| deepfm | 3 | 123,456 | 12.0 | 0.1233 ± 0.0153 |" in printed.out
    assert "kept the newest (surly-shes)" in printed.err


def test_cli_errors(tmp_path, capsys):
    src = tmp_path / "show.json"
    src.write_text(EXP_SHOW_JSON)
    assert cli.main(["compare", "deepfm", "xdeepfm", "--from-json", str(src)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: no finished experiment with model=xdeepfm")
    assert "dvc exp run --queue -S model=xdeepfm" in err
    empty = tmp_path / "empty.json"
    workspace, baseline = json.loads(EXP_SHOW_JSON)[:2]
    empty.write_text(json.dumps([workspace, {**baseline, "experiments": []}]))
    assert cli.main(["table", "--from-json", str(empty), "--out", ""]) == 1
    assert "error: no finished experiments found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a usage error: argparse's code 2
        cli.main(["table", "--rev", "abc1234", "--all-commits", "--out", ""])
    assert exit_.value.code == 2
    assert "--rev and --all-commits exclude each other" in capsys.readouterr().err


def test_cli_passes_rev_to_dvc(monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd

        class Done:
            returncode, stdout, stderr = 0, "[]", ""

        return Done

    monkeypatch.setattr("subprocess.run", fake_run)  # as headline._dvc runs it
    assert cli.exp_show_json(None, False, ["131041c"]) == []
    assert seen["cmd"][-2:] == ["--rev", "131041c"]
    # --rev repeats: runs of several baseline commits (dvc exp show takes each)
    monkeypatch.setattr(cli, "exp_show_json", lambda *a: seen.update(revs=a[2]) or [])
    assert cli.main(["table", "--rev", "aaa1111", "--rev", "bbb2222", "--out", ""]) == 1
    assert seen["revs"] == ["aaa1111", "bbb2222"]


def test_cli_compare_rank_files(tmp_path, capsys):
    files = {}
    for name, ranks in {"a": [1, 1, 2, 1], "b": [3, 1, 50, 2], "c": [1, 1, 2]}.items():
        files[name] = tmp_path / f"{name}.parquet"
        ranks_frame(list(range(1, len(ranks) + 1)), ranks).to_parquet(files[name])
    args = ["compare", "--ranks-a", str(files["a"]), "--ranks-b", str(files["b"])]
    assert cli.main([*args, "--resamples", "500"]) == 0
    out = capsys.readouterr().out
    assert "full_ndcg@10 on test, 4 users" in out
    assert "Wilcoxon signed-rank (two-sided): p = " in out
    assert cli.main(["compare", "--ranks-a", str(files["a"]), "--ranks-b", str(files["c"])]) == 1
    assert "evaluated on different users" in capsys.readouterr().err


def test_the_report_reads_the_artefact_paths_dvc_yaml_names(tmp_path, monkeypatch):
    """dvc.yaml is the one place that names the metric files; the report follows it."""
    from deepfm.results.runs import metric_files

    assert metric_files() == (
        "metrics/eval.json", "metrics/timing/summary.json", "metrics/train/metrics.json"
    )  # fmt: skip
    (tmp_path / "dvc.yaml").write_text(
        "vars:\n  - paths: {metrics: out/m.json, timing: out/t, curves: out/c, ranks: r.pq}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert metric_files() == ("out/m.json", "out/t/summary.json", "out/c/metrics.json")


def _ctr_rows(labels, logits, split="test") -> pd.DataFrame:
    return pd.DataFrame(
        {"split": split, "row": range(len(labels)), "label": labels, "logit": logits}
    )


def test_paired_row_test_over_impressions():
    from sklearn.metrics import roc_auc_score

    from deepfm.results.statistics import paired_row_test

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    good = labels + rng.normal(0, 0.8, 400)  # informative
    noise = rng.normal(0, 1, 400)
    same = paired_row_test(labels, [good], [good], n_resamples=200)
    assert same.value_a == same.value_b == pytest.approx(roc_auc_score(labels, good))
    assert same.ci_low == same.ci_high == 0 and not same.significant
    better = paired_row_test(labels, [good], [noise], n_resamples=300)
    assert better.ci_low > 0.1 and better.significant
    # two runs of a model: the metric is averaged over runs, not over pooled logits
    two = paired_row_test(labels, [good, noise], [noise], n_resamples=50)
    want = (roc_auc_score(labels, good) + roc_auc_score(labels, noise)) / 2
    assert two.value_a == pytest.approx(want)
    lower = paired_row_test(labels, [good], [noise], metric="logloss", n_resamples=50)
    assert lower.value_a != lower.value_b
    with pytest.raises(ReportError, match="takes auc, logloss, gauc, got 'ndcg@10'"):
        paired_row_test(labels, [good], [noise], metric="ndcg@10")
    with pytest.raises(ReportError, match="gauc needs the rows' groups"):
        paired_row_test(labels, [good], [noise], metric="gauc")


def test_paired_group_auc_test_resamples_groups():
    from deepfm.evaluation.metrics import group_auc
    from deepfm.results.statistics import paired_row_test

    rng = np.random.default_rng(4)
    groups = rng.integers(1, 60, 2000).astype(np.uint64)
    groups[:30] = 0  # rows of no group take no part
    labels = rng.integers(0, 2, 2000)
    good = labels + rng.normal(0, 0.8, 2000)
    noise = rng.normal(0, 1, 2000)
    kept = groups != 0
    r = paired_row_test(labels, [good], [noise], metric="gauc", groups=groups, n_resamples=300)
    assert r.unit == "groups" and r.n_rows == 59
    assert r.value_a == pytest.approx(group_auc(labels[kept], good[kept], groups[kept]))
    assert r.value_b == pytest.approx(group_auc(labels[kept], noise[kept], groups[kept]))
    assert r.ci_low > 0.1 and r.significant
    same = paired_row_test(labels, [good], [good], metric="gauc", groups=groups, n_resamples=50)
    assert same.ci_low == same.ci_high == 0 and not same.significant
    # two runs: the per-group AUCs are averaged over the runs
    two = paired_row_test(
        labels, [good, noise], [noise], metric="gauc", groups=groups, n_resamples=20
    )
    want = (r.value_a + r.value_b) / 2
    assert two.value_a == pytest.approx(want)


def test_cli_compare_and_table_on_ctr_runs(tmp_path, capsys):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    files = {}
    for name, logits in {
        "a": labels + rng.normal(0, 0.7, 300),
        "b": rng.normal(0, 1, 300),
    }.items():
        files[name] = tmp_path / f"{name}.parquet"
        pd.concat([_ctr_rows(labels, logits), _ctr_rows(labels[:5], logits[:5], "val")]).to_parquet(
            files[name]
        )
    args = ["compare", "--ranks-a", str(files["a"]), "--ranks-b", str(files["b"])]
    assert cli.main([*args, "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "auc on test, 300 rows (ctr protocol)" in out
    assert "(200 resamples of rows)" in out and "-> significant: the CI excludes 0" in out
    files["c"] = tmp_path / "c.parquet"
    _ctr_rows(1 - labels, labels * 1.0).to_parquet(files["c"])
    assert cli.main(["compare", "--ranks-a", str(files["a"]), "--ranks-b", str(files["c"])]) == 1
    assert "were scored on other rows" in capsys.readouterr().err


# --------------------------------------------------------------------------- run records


def with_dataset_params(exp_show: list) -> list:
    """The exp show entries with a `dataset` param and the params of two declared datasets,
    as params.yaml has them (the records keep the run's own dataset's params only)."""
    for value in exp_show if isinstance(exp_show, list) else exp_show.values():
        if isinstance(value, dict | list):
            with_dataset_params(value)
    if isinstance(exp_show, dict) and "params.yaml" in exp_show:
        exp_show["params.yaml"]["data"].update(
            dataset="ml-100k",
            datasets={
                "ml-100k": {"source": "ml-100k", "protocol": "topk"},
                "ml-1m": {"source": "ml-1m", "protocol": "topk"},
            },
        )
    return exp_show


def fake_ranks(rev: str) -> pd.DataFrame:
    """A rank table of ML-100K's size (942 users, val and test), its ranks drawn from the rev,
    so every run has its own."""
    rng = np.random.default_rng(zlib.crc32(rev.encode()))
    users = list(range(1, 943))
    frames = [
        ranks_frame(users, rng.integers(1, 1683, 942), rng.integers(1, 101, 942), split=split)
        for split in ("val", "test")
    ]
    return pd.concat(frames, ignore_index=True).assign(num_candidates=1682)


def fake_curves(rev: str) -> dict[str, pd.Series]:
    """dvclive curves as `read_curves_at` gives them: 12 steps (step 10 sorts before 2 as
    text) and a NaN (JSON has none)."""
    shift = zlib.crc32(rev.encode()) % 100 / 1000
    steps = pd.Index(range(12), name="step")
    ndcg = pd.Series(0.05 + 0.01 * np.arange(12) + shift, index=steps, name="full_ndcg@10")
    loss = pd.Series(0.5 / (np.arange(12) + 1), index=steps, name="loss")
    loss[3] = math.nan
    return {"val/full_ndcg@10": ndcg, "train/loss": loss}


@pytest.fixture
def dvc_source(tmp_path, monkeypatch) -> str:
    """A saved `dvc exp show --json`, with each run's rank table and curves faked at the seam
    the CLI reads them through (dvc.api at the run's rev)."""
    show = tmp_path / "show.json"
    show.write_text(json.dumps(with_dataset_params(json.loads(EXP_SHOW_JSON))))
    monkeypatch.setattr(cli, "read_ranks_at", lambda rev, name: fake_ranks(rev))
    monkeypatch.setattr(cli, "read_curves_at", fake_curves)
    return str(show)


def no_dvc(monkeypatch) -> None:
    """As on a fresh clone: no experiment refs, so dvc.api cannot read any run's files."""

    def unreachable(*args):
        raise AssertionError(f"read through DVC: {args}")

    monkeypatch.setattr(cli, "read_ranks_at", unreachable)
    monkeypatch.setattr(cli, "read_curves_at", unreachable)


# the runs `table` keeps from EXP_SHOW_JSON: (model, seed, rev)
KEPT = [
    ("deepfm", 1, "9c587a118d47489bd839e1aaaf03fd504d5f3408"),
    ("deepfm", 2, "912675f74761ccf5e60170ec2fd82fbed6e7d669"),
    ("deepfm", 3, "f6f878ad55c9debe5ba775fbfe815fcd7d4ca071"),
    ("fm", 1, "699e6d5d0eafb60f468a70d27e85ba4fe72cb061"),
    ("itempop", 1, "304b77129f19af8f17ff191b11c9727d1d938a62"),
    ("itempop", 2, "3fcfca8d3c53a971f92655d7cd1aeaf814017df5"),
]


def test_export_writes_one_small_sorted_record_per_run(tmp_path, dvc_source, capsys):
    out = tmp_path / "results" / "runs"
    assert cli.main(["export", str(out), "--from-json", dvc_source]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == f"wrote 6 run record(s) to {out}"
    stems = [f"{model}/{seed}-{rev[:7]}" for model, seed, rev in KEPT]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == sorted(
        f"{stem}{ext}" for stem in stems for ext in (".json", ".ranks.parquet", ".curves.json")
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["runs"]  # no temporary folder left
    text = (out / "deepfm/1-9c587a1.json").read_text()
    record = json.loads(text)
    assert text == json.dumps(record, sort_keys=True, indent=1) + "\n"
    assert record["name"] == "surly-shes" and record["kind"] == "experiment"
    assert record["rev"] == KEPT[0][2] and record["seed"] == 1
    assert record["test.full_ndcg@10"] == 0.11 and record["param.train.epochs"] == 4
    assert record["parameters"] == 123456 and record["train.train.loss"] == 0.5
    assert record["param.datasets.ml-100k.source"] == "ml-100k"
    assert not [k for k in record if k.startswith("param.datasets.ml-1m")] and "order" not in record
    curves = json.loads((out / "deepfm/1-9c587a1.curves.json").read_text())
    assert curves["train/loss"]["3"] is None and curves["train/loss"]["10"] == pytest.approx(
        0.5 / 11
    )
    for model, seed, rev in KEPT:
        ranks = out / f"{model}/{seed}-{rev[:7]}.ranks.parquet"
        assert pq.ParquetFile(ranks).metadata.row_group(0).column(0).compression == "ZSTD"
        pd.testing.assert_frame_equal(pd.read_parquet(ranks), fake_ranks(rev))
    sizes = {p.name: p.stat().st_size for p in out.rglob("*.*")}
    assert max(sizes.values()) < 40_000, sizes


def test_the_reports_from_records_equal_those_from_dvc(tmp_path, dvc_source, monkeypatch, capsys):
    """table, compare and the figures give the same output from the records, read with no
    DVC at all, as from the experiments they were exported from."""
    records = str(tmp_path / "runs")
    commands = [
        ["table", "--out", ""],
        ["compare", "deepfm", "itempop", "--resamples", "500"],
        ["compare", "fm", "deepfm", "--metric", "hr@10", "--split", "val", "--resamples", "300"],
    ]
    from_dvc = []
    for command in commands:
        assert cli.main([*command, "--from-json", dvc_source]) == 0
        from_dvc.append(capsys.readouterr().out)
    assert cli.main(["export", records, "--from-json", dvc_source]) == 0
    capsys.readouterr()
    no_dvc(monkeypatch)
    for command, expected in zip(commands, from_dvc, strict=True):
        assert cli.main([*command, "--records", records]) == 0
        printed = capsys.readouterr()
        assert printed.out == expected
    assert "| deepfm | 3 | 123,456 | 12.0 | 0.1233 ± 0.0153 |" in from_dvc[0]
    assert "full_ndcg@10 on test, 942 users" in from_dvc[1]
    assert "hr@10 on val, 942 users" in from_dvc[2]
    assert printed.err == "warning: runs of deepfm differ in train.epochs {3, 4}\n"


def test_the_figures_from_records_equal_those_from_dvc(tmp_path, dvc_source, monkeypatch, capsys):
    args = ["figures", "--dpi", "30", "--resamples", "200"]
    assert cli.main([*args, "--from-json", dvc_source, "--out", str(tmp_path / "dvc")]) == 0
    assert cli.main(["export", str(tmp_path / "runs"), "--from-json", dvc_source]) == 0
    no_dvc(monkeypatch)
    records = ["--records", str(tmp_path / "runs")]
    assert cli.main([*args, *records, "--out", str(tmp_path / "records")]) == 0
    assert "not drawn" not in capsys.readouterr().err
    pngs = sorted(p.name for p in (tmp_path / "dvc").iterdir())
    assert pngs == ["metrics_at_k.png", "models_ci.png", "rank_distribution.png", "val_curves.png"]
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == pngs
    for name in pngs:
        assert (tmp_path / "records" / name).read_bytes() == (tmp_path / "dvc" / name).read_bytes()


def test_records_read_back_as_the_rows_and_files_they_came_from(tmp_path, dvc_source):
    from deepfm.results.records import read_records, write_records

    runs = select_runs(parse_exp_show(json.loads(Path(dvc_source).read_text()))).runs
    write_records(runs, tmp_path / "runs", cli.read_ranks_at, cli.read_curves_at)
    rows, read_ranks, read_curves = read_records(tmp_path / "runs")
    again = select_runs(rows).runs
    own = [c for c in runs.columns if c != "order" and not c.startswith("param.datasets.ml-1m")]
    assert sorted(again.columns) == sorted([*own, "order"])
    # values equal; dtypes may not be: pandas reads the records' strings as its str dtype
    pd.testing.assert_frame_equal(again[own], runs[own], check_dtype=False)
    for _, _, rev in KEPT:
        pd.testing.assert_frame_equal(read_ranks(rev, "a run"), fake_ranks(rev))
        curves = read_curves(rev)
        assert list(curves) == ["train/loss", "val/full_ndcg@10"]
        for key, series in fake_curves(rev).items():
            pd.testing.assert_series_equal(curves[key], series)


def test_run_record_keeps_json_values_and_the_run_s_own_dataset():
    from deepfm.results.records import record_stem, run_record

    run = {
        "name": "x", "order": 3, "seed": math.nan, "timestamp": None,
        "test.auc": math.nan, "test.hr@10": np.float32(0.5), "threads": np.int64(2),
        "param.lr": [0.1, math.nan], "param.dataset": "a",
        "param.datasets.a.x": 1, "param.datasets.b.x": 2, "param.datasets.ab.x": 3,
    }  # fmt: skip
    record = run_record(run)
    assert record == {
        "name": "x", "seed": None, "timestamp": None, "test.hr@10": 0.5, "threads": 2,
        "param.lr": [0.1, None], "param.dataset": "a", "param.datasets.a.x": 1,
    }  # fmt: skip
    assert type(record["threads"]) is int and type(record["test.hr@10"]) is float
    assert record_stem("fm", None, "abcdef123") == "fm/none-abcdef1"
    assert record_stem("fm", math.nan, "abcdef123") == "fm/none-abcdef1"
    assert record_stem("fm", 2.0, "workspace") == "fm/2-workspa"
    assert record_stem("fm", np.int64(7), "abcdef123") == "fm/7-abcdef1"


def test_an_interrupted_export_leaves_the_old_records(tmp_path, dvc_source, monkeypatch, capsys):
    out = tmp_path / "runs"
    (out / "deepfm").mkdir(parents=True)
    (out / "deepfm" / "1-old.json").write_text("{}")

    def ranks_at(rev, name):
        if name == "hulky-rams":
            raise ReportError(f"cannot read metrics/eval_ranks.parquet of experiment {name}")
        return fake_ranks(rev)

    monkeypatch.setattr(cli, "read_ranks_at", ranks_at)
    assert cli.main(["export", str(out), "--from-json", dvc_source]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == "error: cannot read metrics/eval_ranks.parquet of experiment hulky-rams"
    assert [str(p.relative_to(out)) for p in out.rglob("*")] == ["deepfm", "deepfm/1-old.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "show.json"]


def test_records_errors(tmp_path, dvc_source, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "deepfm").mkdir()
    (empty / "deepfm" / "1-abc.curves.json").write_text("{}")  # curves are no record
    for command in (["table", "--out", ""], ["compare", "deepfm", "fm"], ["figures"]):
        assert cli.main([*command, "--records", str(empty)]) == 1
        assert capsys.readouterr().err == (
            f"error: no run records in {empty}: write them where the DVC experiments are, with "
            f"`deepfm report export {empty}` (same run options as `table`), and commit them\n"
        )
    for source in (["--from-json", dvc_source], ["--rev", "abc1234"], ["--all-commits"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["table", "--records", str(empty), *source])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: deepfm report table")
        assert err.endswith(
            "error: --records reads run records, not DVC: drop --from-json, --rev and "
            "--all-commits\n"
        )
    runs = tmp_path / "runs"
    assert cli.main(["export", str(runs), "--from-json", dvc_source]) == 0
    capsys.readouterr()
    assert (
        cli.main(["table", "--out", "", "--records", str(runs), "--where", "train.epochs=9"]) == 1
    )
    assert capsys.readouterr().err.endswith(
        f"error: no run of the records in {runs} is selected: see the notes above, --where, "
        "--include-baselines and --include-workspace\n"
    )


def test_holm_adjusts_a_hand_worked_family():
    from deepfm.results.statistics import holm

    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> made
    # non-decreasing: 0.02, 0.03, 0.06, 0.06; back in the given order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # 1.2 capped at 1; 0.9 raised to stay non-decreasing
    assert holm([0.02]) == [0.02]


def test_compare_with_several_models_is_one_holm_family(dvc_source, capsys):
    """`compare A B C`: A against B and against C, each difference as the two-model compare
    gives it, p Holm-adjusted over the two, the CIs at 97.5%, the verdict on the adjusted p."""
    import re

    from deepfm.results.statistics import holm

    def run(*models):
        assert cli.main(["compare", *models, "--resamples", "400", "--from-json", dvc_source]) == 0
        return capsys.readouterr().out

    alone = [run("deepfm", other) for other in ("fm", "itempop")]
    family = run("deepfm", "fm", "itempop")
    blocks = family.split("full_ndcg@10 on test")[1:]
    assert len(blocks) == 2
    raw = [float(re.search(r"Wilcoxon signed-rank \(two-sided\): p = (\S+)", t)[1]) for t in alone]
    for block, single, p_holm in zip(blocks, alone, holm(raw), strict=True):
        difference = re.search(r"difference (\S+ - \S+): (\S+),", single).groups()
        assert re.search(r"difference (\S+ - \S+): (\S+),", block).groups() == difference
        assert "97.5% paired bootstrap CI" in block and "95% paired" in single
        got = float(re.search(r"Holm-adjusted over 2 comparisons: p = (\S+)", block)[1])
        assert got == pytest.approx(p_holm, rel=1e-2)
        assert "Holm-adjusted p over the 2 comparisons of deepfm" in block
    assert "Holm" not in alone[0]


def test_a_fresh_clone_reads_the_committed_records(tmp_path, dvc_source, monkeypatch, capsys):
    """No experiment of HEAD and no source named: table and compare read results/runs (what a
    fresh clone has), and say so; a named source never falls back; export never reads them."""
    assert cli.main(["export", str(tmp_path / "results" / "runs"), "--from-json", dvc_source]) == 0
    assert cli.main(["table", "--from-json", dvc_source]) == 0
    expected = capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "exp_show_json", lambda *a: [])  # a clone has no experiments
    assert cli.main(["table"]) == 0
    printed = capsys.readouterr()
    assert printed.out == expected
    assert printed.err.startswith(
        "no finished DVC experiment based on HEAD: reading the committed run records in "
        "results/runs/ (--records DIR names others)\n"
    )
    assert not (tmp_path / "reports").exists()  # the table writes a file only with --out
    assert cli.main(["compare", "deepfm", "itempop", "--resamples", "200"]) == 0
    assert "full_ndcg@10 on test, 942 users" in capsys.readouterr().out
    assert cli.main(["table", "--rev", "abc1234"]) == 1
    assert "error: no finished experiments found" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "again")]) == 1
    assert not (tmp_path / "again").exists()
