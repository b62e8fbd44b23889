import sys; sys.path.insert(0,'tests')
import torch, pathlib, tempfile
from test_rl_trainer import _trainer, _tokenizer
from textdiff import TextDiffConfig, TextDiffModel
from textdiff.rl.estimators import coupled_estimate, row_mask_seeds
tmp=pathlib.Path(tempfile.mkdtemp()); tok=_tokenizer(); torch.manual_seed(0)
model = TextDiffModel(TextDiffConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32, mask_token_id=1, eos_token_id=0, pad_token_id=0))
model.save_pretrained(tmp/'p'); tok.save_pretrained(tmp/'p')
tr=_trainer(str(tmp/'p'),tmp); m=tr.model
prompt=tok("say a")["input_ids"]; short=tok("aa")["input_ids"]+[0]
ids=torch.tensor([prompt+short]); mask=torch.ones_like(ids)
with torch.no_grad():
    a=tr._get_per_token_logps_and_entropies(m,ids,mask,3)[0]
    canvas=torch.tensor([prompt+short+[0,0,0]])
    seeds=row_mask_seeds(ids,None,rollout_id=tr._rollout_id,iteration=0)
    for am in (None, torch.ones_like(canvas)):
        print(a, coupled_estimate(m,canvas,am,6,mask_token_id=1,seeds=seeds).logps[:, :3])
    m.eval(); print(coupled_estimate(m,canvas,None,6,mask_token_id=1,seeds=seeds).logps[:, :3], tr._get_per_token_logps_and_entropies(m,ids,mask,3)[0])
print(m.training, tr.args.mask_seed)
with torch.no_grad():
    with tr.accelerator.autocast():
        print("autocast", coupled_estimate(m,canvas,torch.ones_like(canvas),6,mask_token_id=1,seeds=seeds).logps[:, :3])
    print(tr.accelerator.mixed_precision, torch.is_autocast_enabled('cpu'))
