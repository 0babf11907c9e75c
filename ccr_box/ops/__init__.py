"""Operations commands: init, telegram helpers, doctor, service install, backup.

These are command-line tools around the server and agent; none of them imports Textual.
"""
