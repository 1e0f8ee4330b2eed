"""The method of active point selection, with no run in it: strategies (metrics), prediction sets, selection,
allocation, point statistics, the mask constraint, AFIS's budget and scorers, run comparison (the run:
:mod:`apis.loop`)."""
