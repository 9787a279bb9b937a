"""nnU-Net v2 trainer that fits a wall-clock budget, for `qmed benchmark quality`.

This file is loaded by nnU-Net itself (through the `nnUNet_extTrainer` environment variable,
nnunetv2 >= 2.8), never imported by qmed; it is the only qmed file that imports nnunetv2.

nnUNetTrainer_qmedBudget is the stock nnUNetTrainer (same plans, network, data augmentation,
Dice + CE loss with deep supervision, SGD with Nesterov momentum, poly learning-rate schedule,
checkpointing and EMA pseudo-Dice selection) except for how long it trains. nnU-Net's shortest
stock variants (nnUNetTrainer_1epoch, _5epochs, ...) keep 250 iterations per epoch, which on a
2-core CPU can take longer than a whole benchmark budget; this variant instead

* times the first iterations (after one warm-up), then picks the iterations per epoch (at most
  the stock 250, so that there are at least QMED_NNUNET_MIN_EPOCHS epochs, default 10) and the
  number of epochs that fit the budget QMED_NNUNET_BUDGET_S (seconds, counted from the start of
  run_training, data loader start-up included); validation iterations stay at the stock ratio
  (50 per 250);
* re-plans the number of epochs after every epoch from the measured epoch times, and sets the
  poly schedule's length to it, so the learning rate still decays to (almost) zero at the end;
* skips the final "actual validation" when trained on fold `all`: there the validation cases are
  the training cases, and predicting all of them would only cost time (qmed predicts its own
  validation folder with nnUNetv2_predict instead).

When it stops it writes qmed_budget.json (epochs, iterations, timings) into the fold folder.
"""

from __future__ import annotations

import math
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

STOCK_ITERS = 250
STOCK_VAL_RATIO = 50 / 250
VAL_COST = 0.35  # a validation iteration (forward only) costs about a third of a training one
EPOCH_OVERHEAD_S = 2.0  # logging, progress plot, an occasional checkpoint


def plan_epochs(
    remaining_s: float,
    t_iter: float,
    min_epochs: int,
    max_iters: int = STOCK_ITERS,
    overhead_s: float = EPOCH_OVERHEAD_S,
) -> tuple[int, int, int]:
    """-> (train iterations per epoch, validation iterations per epoch, epochs) fitting remaining_s."""
    per_iter = t_iter * (1.0 + STOCK_VAL_RATIO * VAL_COST)
    iters = int((remaining_s / max(1, min_epochs) - overhead_s) / per_iter)
    iters = max(1, min(max_iters, iters))
    val_iters = max(1, round(iters * STOCK_VAL_RATIO))
    epoch_s = iters * t_iter + val_iters * t_iter * VAL_COST + overhead_s
    epochs = max(1, int(remaining_s / epoch_s))
    return iters, val_iters, epochs


class nnUNetTrainer_qmedBudget(nnUNetTrainer):
    # nnU-Net records the constructor's arguments by name (inspect.signature), so spell them out.
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.qmed_budget_s = float(os.environ.get("QMED_NNUNET_BUDGET_S", "0") or 0)
        self.qmed_min_epochs = int(os.environ.get("QMED_NNUNET_MIN_EPOCHS", "10") or 10)
        self.qmed_calibration_iters = 3
        self.qmed_log: dict = {}

    def _qmed_set_epochs(self, epochs: int) -> None:
        self.num_epochs = max(int(epochs), self.current_epoch + 1)
        self.lr_scheduler.max_steps = self.num_epochs  # PolyLRScheduler: lr = lr0 * (1 - epoch / max_steps) ** 0.9

    def run_training(self):
        if self.qmed_budget_s <= 0:
            raise RuntimeError("nnUNetTrainer_qmedBudget needs the environment variable QMED_NNUNET_BUDGET_S (seconds)")
        start = time.time()
        self.on_train_start()
        self.num_epochs = 10**6  # placeholder until the first iterations are timed
        self.lr_scheduler.max_steps = self.num_epochs
        calibrated = False
        epoch_times: list[float] = []
        while self.current_epoch < self.num_epochs:
            t_epoch = time.time()
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            i = 0
            t_cal = None
            while i < self.num_iterations_per_epoch:
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                i += 1
                if not calibrated and i == 1:
                    t_cal = time.time()  # iteration 0 was the warm-up
                elif not calibrated and i == 1 + self.qmed_calibration_iters:
                    t_iter = (time.time() - t_cal) / self.qmed_calibration_iters
                    remaining = (
                        self.qmed_budget_s - (time.time() - start) + i * t_iter
                    )  # this epoch's iterations so far count
                    iters, val_iters, epochs = plan_epochs(remaining, t_iter, self.qmed_min_epochs)
                    self.num_iterations_per_epoch = max(iters, i)
                    self.num_val_iterations_per_epoch = val_iters
                    # epoch 0's lr was set from the placeholder length: the first epoch runs at the peak lr, as in the stock schedule
                    self._qmed_set_epochs(epochs)
                    self.qmed_log.update(
                        {
                            "seconds_per_iteration": round(t_iter, 4),
                            "planned_epochs": epochs,
                            "iterations_per_epoch": self.num_iterations_per_epoch,
                            "val_iterations_per_epoch": val_iters,
                        }
                    )
                    self.print_to_log_file(
                        f"qmed budget {self.qmed_budget_s:.0f}s: {t_iter:.3f}s per iteration -> "
                        f"{epochs} epochs x {self.num_iterations_per_epoch} iterations",
                        also_print_to_console=True,
                    )
                    calibrated = True
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()  # increments current_epoch
            epoch_times.append(time.time() - t_epoch)
            # Re-plan from measured epochs (the first one carries start-up costs; use the later ones when there are any).
            recent = epoch_times[1:][-3:] or epoch_times[-1:]
            per_epoch = sum(recent) / len(recent)
            remaining = self.qmed_budget_s - (time.time() - start)
            self._qmed_set_epochs(self.current_epoch + max(0, math.floor(remaining / per_epoch)))
            if remaining < per_epoch:
                self.num_epochs = self.current_epoch
        self.qmed_log.update(
            {
                "epochs": self.current_epoch,
                "train_seconds": round(time.time() - start, 1),
                "budget_seconds": self.qmed_budget_s,
                "batch_size": self.batch_size,
                "patch_size": [int(x) for x in self.configuration_manager.patch_size],
                "epoch_seconds": [round(t, 2) for t in epoch_times],
            }
        )
        self.on_train_end()
        if self.local_rank == 0:
            from qmed.io.files import write_json  # strict JSON, like every JSON qmed writes

            write_json(os.path.join(self.output_folder, "qmed_budget.json"), self.qmed_log)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.fold == "all":
            self.print_to_log_file(
                "qmed: skipping the final validation (fold 'all' validates on the training cases)",
                also_print_to_console=True,
            )
            return
        return super().perform_actual_validation(save_probabilities)
