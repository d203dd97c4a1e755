"""Our stand-in for the reference's ``test.aggregated_defaults``: the classes that compute
summaries ``n_per_device`` simulations at a time on a list of devices (see ``defaults.py``)."""
from __future__ import annotations

import copy
import re

import jax

from test.defaults import defaultTests, refuses

VALIDATION = ("validation_fiducial", "validation_derivative")
HOST, DEVICES = jax.devices("cpu")[0], jax.devices()


class aggregatedTests(defaultTests):  # noqa: N801 - the reference's name
    def __init__(self, host=HOST, devices=DEVICES, n_per_device=1000,
                 reduced_n_per_device=100, simulate=False, **kwargs):
        super().__init__(**kwargs)
        self.host, self.devices = host, devices
        self.n_devices = len(devices)
        self.n_per_device, self.reduced_n_per_device = n_per_device, reduced_n_per_device
        for arguments, per_device in ((self.kwargs, n_per_device),
                                      (self.reduced_kwargs, reduced_n_per_device)):
            arguments.update(host=None, devices=None, n_per_device=per_device)
        self.simulate = simulate

    def preload(self, dictionary, state=False, validate=False):
        dictionary["host"] = jax.devices("cpu")[0]
        dictionary["devices"] = jax.devices()
        if state:
            dictionary["key_or_state"] = self.state
        if not self.simulate and not validate:
            for name in VALIDATION:
                dictionary.pop(name)
        return dictionary

    def valid_type(self, variable, kwargs):
        return list if variable == "devices" else super().valid_type(variable, kwargs)

    def specific_exceptions(self, variable, input_variable, kwargs):
        if variable in VALIDATION and variable not in kwargs:
            return True
        if variable == "host" and input_variable is not None \
                and not isinstance(input_variable, jax.Device):
            kwargs["host"] = input_variable
            refuses(TypeError,
                    re.escape(f"`host` must be an xla device but is a {type(input_variable)}"),
                    lambda: self.imnn(**kwargs))
            return True
        # The reference's tests leave a prefetch of None untried.
        return variable == "prefetch" and input_variable is None

    def splitting_resize(self, arguments):
        arguments["fiducial"] = arguments["fiducial"][:arguments["n_s"]]
        arguments["derivative"] = arguments["derivative"][:arguments["n_d"]]
        if "validation_fiducial" in arguments:
            arguments["validation_fiducial"] = arguments["validation_fiducial"][:arguments["n_s"]]
            arguments["validation_derivative"] = \
                arguments["validation_derivative"][:arguments["n_d"]]
        return arguments

    def splitting(self, variable, kwargs, state=False, validate=True):
        """Counts that ``n_per_device`` on one device does not divide are refused."""
        arguments = self.preload(copy.deepcopy(kwargs), state=state, validate=validate)
        arguments["devices"] = [jax.devices()[0]]
        if variable == "same":
            arguments.update(n_s=1000, n_d=1000, n_per_device=11)
            amount, label = kwargs["n_s"], "n_s and n_d"
        else:
            per_device = arguments[variable] // 2 - 1
            other = "n_d" if variable == "n_s" else "n_s"
            arguments.update({"n_per_device": per_device, other: 2 * per_device})
            amount, label = arguments[variable], variable
        if not self.simulate:
            arguments = self.splitting_resize(arguments)
        refuses(ValueError, re.escape(
            f"`{label}` of {amount} will not split evenly between "
            f"{len(arguments['devices'])} devices when calculating "
            f"{arguments['n_per_device']} per device."), lambda: self.imnn(**arguments))
