"""webapp: the sample service bakery bakes into the example image.

Standard library only, so it runs on Debian's own python3 with nothing installed
from pip: the image carries no build tools and installs nothing at boot.
"""

__version__ = "1.0.0"
