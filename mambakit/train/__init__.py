"""Fine-tuning and pretraining: data formats and loss masks, packing, HF Trainer glue, LoRA, recipes.

    from mambakit.train.recipes import load_recipe
    from mambakit.train.run import finetune
    finetune(load_recipe("oasst-full", {"training.num_train_epochs": 1}), "runs/oasst")

Nothing is imported here, so ``mambakit`` commands that do not train never load the Trainer.
"""
