from .errors import VmError  # placeholder, replaced below
class GuestResult: pass
def run_in_guest(*a, **k): raise NotImplementedError
