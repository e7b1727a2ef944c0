from heron.scheduler.output import ScheduledRequest, SchedulerOutput
from heron.scheduler.scheduler import Scheduler

__all__ = ["ScheduledRequest", "Scheduler", "SchedulerOutput"]
