"""Where work runs, how it shows progress, how long it took and how it is stopped, one concern a module:
device.py (device choice, exact float32 matmuls), workers.py (decode worker count), progress.py (the one
progress layout), timing.py (PhaseTimer), signals.py (StopSignals). Importers name the module; nothing is
re-exported here.
"""
