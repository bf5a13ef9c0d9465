"""Every table, imported here so Alembic's metadata sees them all."""

from shared.models.base import Base
from shared.models.task_runs import FINISHED_STATES, TaskRun, TaskState
from shared.models.users import User

__all__ = ["FINISHED_STATES", "Base", "TaskRun", "TaskState", "User"]
