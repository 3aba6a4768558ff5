"""Errors the command line turns into exit code 2 with a message naming the field or file."""


class JobError(Exception):
    """An invalid job or input. The message names the field or file and says what to do."""
