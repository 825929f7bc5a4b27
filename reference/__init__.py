"""PyTorch versions of the networks our weights come from (megvii, torchvision, timm): what the
conversion tests compare against and what the benchmark times. Not part of the zoo: needs torch."""
