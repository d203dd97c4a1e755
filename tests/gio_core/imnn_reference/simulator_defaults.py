"""Our stand-in for the reference's ``test.simulator_defaults``: simulations made on the fly
by the simulator (see ``defaults.py``)."""
from __future__ import annotations

import inspect

from test.defaults import defaultTests, refuses, simulator

TWO_ARGUMENTS = "`simulator` must take two arguments, a JAX prng and simulator parameters."


class simulatorTests(defaultTests):  # noqa: N801 - the reference's name
    def __init__(self, simulator=simulator, **kwargs):
        super().__init__(**kwargs)
        self.simulator = simulator
        self.kwargs["simulator"] = simulator
        self.reduced_kwargs["simulator"] = simulator
        self.simulate = True

    def specific_exceptions(self, variable, input_variable, kwargs):
        if (variable == "simulator" and callable(input_variable)
                and len(inspect.signature(input_variable).parameters) != 2):
            kwargs["simulator"] = input_variable
            refuses(ValueError, TWO_ARGUMENTS, lambda: self.imnn(**kwargs))
            return True
        return False
