"""The support console's static files (HTML, CSS, JS), served by the relay at ``/``."""
