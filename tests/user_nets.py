"""The source of small user modules (MODULE:FACTORY), written to a .py file by the tests that need one."""

import textwrap

NETS = textwrap.dedent('''
    import math
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        """Not a UNet2DModel: three convs with a sinusoidal time embedding added as a bias."""

        def __init__(self, channels=3, width=8):
            super().__init__()
            self.inp = nn.Conv2d(channels, width, 3, padding=1)
            self.temb = nn.Linear(16, width)
            self.out = nn.Conv2d(width, channels, 3, padding=1)

        def forward(self, x, t):
            freqs = torch.exp(-math.log(10000.0) * torch.arange(8, dtype=torch.float32) / 8)
            arg = t[:, None].float() * freqs[None]
            emb = self.temb(torch.cat([arg.sin(), arg.cos()], 1))
            return self.out(torch.nn.functional.silu(self.inp(x) + emb[:, :, None, None]))


    def make():
        return TinyNet()


    def one_input():
        class Net(nn.Module):
            def forward(self, x):
                return x
        return Net()


    def wrong_shape():
        class Net(nn.Module):
            def forward(self, x, t):
                return x[:, :1]
        return Net()


    def not_a_module():
        return 42


    def broken():
        raise RuntimeError("out of coffee")


    def varargs():
        class Net(TinyNet):
            def forward(self, *args, **kwargs):
                return super().forward(*args)
        return Net()


    def class_conditional():
        class Net(TinyNet):
            def forward(self, x, t, class_labels):
                return super().forward(x, t) + class_labels[:, None, None, None]
        return Net()


    def tuple_output():
        class Net(TinyNet):
            def forward(self, x, t):
                eps = super().forward(x, t)
                return eps, eps.mean()
        return Net()


    def dict_output():
        class Net(TinyNet):
            def forward(self, x, t):
                return {"features": self.inp(x), "sample": super().forward(x, t)}
        return Net()


    def namespace_output():
        import types

        class Net(TinyNet):
            def forward(self, x, t):
                return types.SimpleNamespace(sample=super().forward(x, t), step=t)
        return Net()


    def two_candidates():
        class Net(TinyNet):
            def forward(self, x, t):
                eps = super().forward(x, t)
                return {"eps": eps, "var": eps.exp()}
        return Net()


    def branch():
        class Net(TinyNet):
            def forward(self, x, t):
                return super().forward(x, t) * (2 if t.max() > 500 else 1)
        return Net()


    def item():
        class Net(TinyNet):
            def forward(self, x, t):
                return super().forward(x, t) * (float(t[0].item()) / 1000)
        return Net()
''')
