"""Lightning integration: the callbacks that map Trainer hooks onto the accountant.

* :mod:`~lightning_watt.integration.callback`: :class:`WattCallback`, where every key is logged.
* :mod:`~lightning_watt.integration.budget`: :class:`EnergyBudget`, stopping on kWh or CO2e.
* :mod:`~lightning_watt.integration.handoff`: books handed back from ``ddp_spawn`` workers.

Lightning's private state is read only through :mod:`lightning_watt._compat`.
"""
