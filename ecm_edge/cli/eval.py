"""``ecm-edge eval``: detection mAP of a prediction file, or of a trained model on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ecm_edge.cli.main import info
from ecm_edge.cli.options import config_options
from ecm_edge.config import CHOICES, Config, load_config
from ecm_edge.errors import ConfigError

EPILOG = """\b
Examples:
  ecm-edge eval --pred pred.json --gt gt.json --subset test --iou 0.1:0.7:0.1
  ecm-edge eval --pred pred.json --gt gt.json --subset test --protocol thumos14 --json
  ecm-edge eval --checkpoint runs/train/exp --data data/thumos14 --split test -o pred.json

\b
Semantics (ActivityNet): per class, detections ranked by score (ties keep file order); each one takes the
unmatched ground truth of its video and class with the highest tIoU at or above the threshold; interpolated
AP; mAP = mean AP over the classes with ground truth. --protocol thumos14 first removes detections that
overlap a segment of Ambiguous_test.txt (found beside the ground truth or in its reduced/ folder).
"""


def _iou_option(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    from ecm_edge.evaluation import parse_iou_range

    try:
        return parse_iou_range(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command("eval", epilog=EPILOG)
@click.argument("pred_arg", metavar="[PRED]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--pred", "pred_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Detections in the ActivityNet result format (same as the PRED argument).")
@click.option("--gt", "gt_path", type=click.Path(path_type=Path), default=None,
              help="Ground truth: ActivityNet-style JSON or a W-TALC annotation folder.")
@click.option("--subset", default=None, help="Evaluate only the ground-truth videos of this subset (e.g. test).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Trained run folder, model.safetensors or last.pt/best.pt: predict, then score.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset folder for --checkpoint.")
@click.option("--split", default=None, help="Split of --data to predict and score [default: test].")
@click.option("--iou", "iou", callback=_iou_option, default=None, metavar="START:STOP:STEP|LIST",
              help="IoU thresholds, e.g. 0.1:0.7:0.1 or 0.3,0.5,0.7 [default: the config's eval.iou_thresholds].")
@click.option("--protocol", type=click.Choice(CHOICES["eval.protocol"]), default=None,
              help="thumos14: drop detections overlapping Ambiguous_test.txt segments [default: eval.protocol].")
@click.option("--ambiguous", "ambiguous_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Ambiguous_test.txt (implies --protocol thumos14) [default: beside the ground truth or in "
                   "reduced/].")
@click.option("--ignore-unknown", is_flag=True,
              help="Drop detections of unknown videos or labels with a counted warning instead of failing.")
@click.option("--per-class", is_flag=True, help="Also print the AP of every class.")
@click.option("--json", "as_json", is_flag=True, help="Print only the result as JSON (mAP as fractions).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --checkpoint: also write the detections here (ActivityNet result format).")
@config_options(default=None)
def eval_command(pred_arg: Path | None, pred_path: Path | None, gt_path: Path | None, subset: str | None,
                 checkpoint: Path | None, data_dir: Path | None, split: str | None, iou: list[float] | None,
                 protocol: str | None, ambiguous_path: Path | None, ignore_unknown: bool, per_class: bool,
                 as_json: bool, output: Path | None, config_name: str | None, overrides: tuple[str, ...]) -> None:
    """Detection mAP per IoU threshold and their average.

    Either score a prediction file (--pred/PRED and --gt), or predict a dataset split with a trained model
    and score it in one go (--checkpoint and --data). mAP is printed in percent; --json prints fractions.
    """
    if pred_arg is not None and pred_path is not None:
        raise click.UsageError("give the prediction file once: as PRED or with --pred")
    pred_path = pred_path or pred_arg
    if ambiguous_path is not None:
        if protocol == "activitynet":
            raise click.UsageError("--ambiguous only applies with --protocol thumos14")
        protocol = "thumos14"
    file_mode, model_mode = (pred_path, gt_path) != (None, None), (checkpoint, data_dir) != (None, None)
    if file_mode and model_mode:
        raise click.UsageError("choose one mode: --pred with --gt (score a file) or --checkpoint with --data "
                               "(predict and score), not both")
    if file_mode:
        _require({"--pred (or PRED)": pred_path, "--gt": gt_path}, "to score a prediction file")
        _refuse({"--split": split, "-o/--output": output}, "belongs to --checkpoint mode; use --subset here")
        result = _score_file(pred_path, gt_path, subset, iou, protocol, ambiguous_path, ignore_unknown,
                             _eval_config(config_name, overrides))
        source = f"{pred_path} against {gt_path}" + (f" (subset {subset})" if subset else "")
    elif model_mode:
        _require({"--checkpoint": checkpoint, "--data": data_dir}, "to predict and score")
        _refuse({"--subset": subset}, "belongs to --pred mode; use --split here")
        result = _score_checkpoint(checkpoint, data_dir, split or "test", iou, protocol, ambiguous_path,
                                   ignore_unknown, output, config_name, overrides)
        source = f"{checkpoint} on {data_dir} (split {split or 'test'})"
    else:
        raise click.UsageError("nothing to evaluate: give --pred PRED.json and --gt GT.json, "
                               "or --checkpoint RUN and --data DIR")
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    removed = f", {result.num_ambiguous_removed} removed as ambiguous" if result.num_ambiguous_removed else ""
    click.echo(f"mAP of {source}: {result.num_predictions} detections, {result.num_ground_truth} ground-truth "
               f"segments{removed}")
    click.echo(result.format_table())
    if per_class:
        click.echo("")
        click.echo(result.format_per_class())


def _require(values: dict[str, object], purpose: str) -> None:
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise click.UsageError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} needed {purpose}")


def _refuse(values: dict[str, object], why: str) -> None:
    given = [name for name, value in values.items() if value is not None]
    if given:
        raise click.UsageError(f"{given[0]} {why}")


def _eval_config(config_name: str | None, overrides: tuple[str, ...]) -> Config:
    return load_config(config_name, overrides) if config_name or overrides else Config()


def _score_file(pred_path: Path, gt_path: Path, subset: str | None, iou: list[float] | None,
                protocol: str | None, ambiguous_path: Path | None, ignore_unknown: bool, cfg: Config):
    from ecm_edge.data.annotations import load_annotations
    from ecm_edge.evaluation import evaluate_detections, load_prediction_table

    ground_truth = load_annotations(gt_path)
    table = load_prediction_table(pred_path)
    ambiguous = _ambiguous(protocol or cfg.eval.protocol, ambiguous_path, gt_path)
    return evaluate_detections(table, ground_truth, iou or cfg.eval.iou_thresholds, subset=subset,
                               ambiguous=ambiguous, ignore_unknown=ignore_unknown)


def _score_checkpoint(checkpoint: Path, data_dir: Path, split: str, iou: list[float] | None, protocol: str | None,
                      ambiguous_path: Path | None, ignore_unknown: bool, output: Path | None,
                      config_name: str | None, overrides: tuple[str, ...]):
    from ecm_edge.evaluation import evaluate_detections, write_predictions
    from ecm_edge.train.inference import predict_dataset

    settings = _settings_as_overrides(config_name) + tuple(overrides)
    results, ground_truth, cfg = predict_dataset(checkpoint, data_dir, split, settings)
    if output is not None:
        write_predictions(output, results)
        gt_file = data_dir / "gt.json" if (data_dir / "gt.json").is_file() else "GT.json"
        info(f"detections of {len(results)} video(s) written to {output}; re-score them with: "
             f"ecm-edge eval --pred {output} --gt {gt_file} --subset {split}")
    ambiguous = _ambiguous(protocol or cfg.eval.protocol, ambiguous_path, data_dir)
    return evaluate_detections(results, ground_truth, iou or cfg.eval.iou_thresholds, ambiguous=ambiguous,
                               ignore_unknown=ignore_unknown)


def _settings_as_overrides(config_name: str | None) -> tuple[str, ...]:
    """A config's post-processing and evaluation sections as overrides of the checkpoint's own config."""
    if config_name is None:
        return ()
    cfg = load_config(config_name)
    sections = cfg.to_dict()
    return tuple(f"{section}.{key}={json.dumps(value)}" for section in ("post", "eval")
                 for key, value in sections[section].items())


def _ambiguous(protocol: str, ambiguous_path: Path | None, near: Path):
    """The THUMOS14 protocol's ambiguous spans ({video: [N, 2] seconds}), or None for ActivityNet."""
    if protocol != "thumos14":
        return None
    from ecm_edge.data.annotations import load_ambiguous
    from ecm_edge.evaluation import find_ambiguous_file

    return load_ambiguous(ambiguous_path or find_ambiguous_file(near))
