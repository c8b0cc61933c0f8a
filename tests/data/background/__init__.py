"""Background removal (rembg, GrabCut), the cut-out cache and the background swap."""
