"""Loss functions: one small function per task, combined by the weights of the run config."""
from .pretext import TasksConfig, beta_at, io_loss, mir_loss, pm_loss, pretrain_losses

__all__ = ["TasksConfig", "beta_at", "io_loss", "mir_loss", "pm_loss", "pretrain_losses"]
