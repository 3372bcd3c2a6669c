import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task
def greet(number):
    """Log one line, found by its text ("greeting <number>") in the worker's output."""
    logger.info("greeting %s", number)
    return number


@shared_task
def tick():
    logger.info("tick")
