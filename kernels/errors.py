"""The errors a call can raise: bad inputs, a backend's wrong output, an unknown backend name."""


class AttentionInputError(ValueError):
    """Raised when inputs break the backend contract (rank, shapes, dtypes, devices, dropout)."""


class BackendOutputError(RuntimeError):
    """Raised when a backend returns something other than the contract's output (shape, dtype, device)."""


class UnknownBackendError(KeyError):
    """Raised for a backend name that is neither registered nor an importable `module:function`."""

    def __str__(self) -> str:  # KeyError would repr() the message and wrap it in quotes
        return str(self.args[0])
