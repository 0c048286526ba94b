import torch,time,transformers as T
from transformers import Qwen3Config as QC,Qwen3ForCausalLM as QM,GenerationConfig as GC,ContinuousBatchingConfig as CBC
from peft import LoraConfig,get_peft_model
torch.manual_seed(0);torch.set_default_dtype(torch.bfloat16)
c=QC(vocab_size=151936,hidden_size=2560,intermediate_size=9728,num_hidden_layers=36,num_attention_heads=32,num_key_value_heads=8,head_dim=128,tie_word_embeddings=True,eos_token_id=None,pad_token_id=0)
with torch.device('cuda'):m=QM(c).eval()
for q in m.parameters():q.data.normal_(0,0.02)
p=get_peft_model(m,LoraConfig(r=16,target_modules='all-linear')).eval()
bs,L,N=64,300,256
ids=torch.randint(3,150000,(bs,L),device='cuda');am=torch.ones_like(ids)
for j in range(bs):am[j,:(j*37)%150]=0
ids[am==0]=0
def g(t,**k):
  torch.cuda.synchronize();z=time.time()
  o=p.generate(input_ids=ids,attention_mask=am,max_new_tokens=N,do_sample=False,**k)
  torch.cuda.synchronize();d=time.time()-z;print(f"{t}: {d:.1f}s {bs*N/d:.0f} tok/s mem={torch.cuda.max_memory_allocated()/2**30:.1f}G",flush=True);return o
S=dict(cache_implementation='static')
g('lora dyn eager');p.merge_adapter();g('merged dyn eager')
g('merged static 1st(compile)',**S);g('merged static 2nd',**S)
p.unmerge_adapter();g('lora static 1st(compile)',**S);g('lora static 2nd',**S)
p.merge_adapter()
P=[r[q.bool()].tolist() for r,q in zip(ids.cpu(),am.cpu())]
for w in [0,1]:
  z=time.time()
  try:
    R=p.generate_batch(P,generation_config=GC(do_sample=False,max_new_tokens=N,eos_token_id=-1,pad_token_id=0),continuous_batching_config=CBC(block_size=256,num_blocks=256,use_cuda_graph=bool(w)))
    d=time.time()-z;print('CB cudagraph',w,f"{d:.1f}s",sum(len(R[k].generated_tokens) for k in R)/d,'tok/s',flush=True)
  except Exception as e:print('CB fail',repr(e)[:300])
