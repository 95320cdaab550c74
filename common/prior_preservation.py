"""DreamBooth's prior-preservation loss.

Fine-tuning on ten pictures of one fabric teaches "sks" quickly, but it also
drags the meaning of the class words ("a fabric pattern") toward those ten
pictures: the model forgets what other fabrics look like. DreamBooth's remedy
is to keep training, in the same batch, on images that the *original* model
drew for the class prompt. Their loss (the prior loss) rewards the model for
still drawing what it drew before.

Instance and class examples go through the UNet as one concatenated batch
(instances first), so one forward pass serves both; the prediction is split
back in two here.
"""

import torch.nn.functional as F


def prior_preservation_loss(prediction, target, num_instance, prior_weight=1.0):
    """(total, instance, prior) for a batch whose first `num_instance` rows are instance examples.

    total = MSE(instance rows) + prior_weight * MSE(class rows). With no class
    rows (prior preservation off) the prior term is None and total = instance.
    """
    instance_loss = F.mse_loss(prediction[:num_instance].float(), target[:num_instance].float())
    if prediction.shape[0] == num_instance:
        return instance_loss, instance_loss, None
    prior_loss = F.mse_loss(prediction[num_instance:].float(), target[num_instance:].float())
    return instance_loss + prior_weight * prior_loss, instance_loss, prior_loss
