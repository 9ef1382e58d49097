"""A faithful, stateful fake of Plisio's API for tests, end-to-end runs and the demo.

A client written from Plisio's documentation works against it unchanged apart from the base URL
(``http://<host>/api/v1``). In-process: ``httpx.AsyncClient(transport=Sandbox().transport(), ...)``;
on a port: ``LoopbackServer(Sandbox().app)`` or ``persona sandbox --port N``. Test controls live
under ``/_sandbox/`` and as ``Sandbox`` methods. Behaviours Plisio does not document are listed in
``envelope.ASSUMPTIONS`` (each a "[sandbox assumption]").
"""

from tools.plisio.sandbox.envelope import ASSUMPTIONS
from tools.plisio.sandbox.faults import ConnectionDropped, FaultInjector, FaultRule, RequestRecord
from tools.plisio.sandbox.notifier import CallbackDelivery
from tools.plisio.sandbox.records import Customer
from tools.plisio.sandbox.sandbox import SANDBOX_API_KEY, Sandbox
from tools.plisio.sandbox.server import LoopbackServer, serve
from tools.plisio.sandbox.state import InvoiceFinalError, SandboxStateError, UnknownInvoiceError

__all__ = [
    "ASSUMPTIONS",
    "SANDBOX_API_KEY",
    "CallbackDelivery",
    "ConnectionDropped",
    "Customer",
    "FaultInjector",
    "FaultRule",
    "InvoiceFinalError",
    "LoopbackServer",
    "RequestRecord",
    "Sandbox",
    "SandboxStateError",
    "UnknownInvoiceError",
    "serve",
]
