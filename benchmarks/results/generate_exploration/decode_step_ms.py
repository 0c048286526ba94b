import torch,time,sys
from transformers import Qwen3Config as QC,Qwen3ForCausalLM as QM
from peft import LoraConfig,get_peft_model
from torch._dynamo.utils import counters as K
torch.manual_seed(0);torch.set_default_dtype(torch.bfloat16)
c=QC(vocab_size=151936,hidden_size=2560,intermediate_size=9728,num_hidden_layers=36,num_attention_heads=32,num_key_value_heads=8,head_dim=128,tie_word_embeddings=True,eos_token_id=None,pad_token_id=0)
with torch.device('cuda'):m=QM(c).eval()
for q in m.parameters():q.data.normal_(0,0.02)
p=get_peft_model(m,LoraConfig(r=16,target_modules='all-linear')).eval();p.merge_adapter()
def mk(bs,L=300):
  i=torch.randint(3,150000,(bs,L),device='cuda');a=torch.ones_like(i)
  for j in range(bs):a[j,:(j*37)%150]=0
  i[a==0]=0;return i,a
def g(t,x,N,**k):
  torch.cuda.synchronize();z=time.time()
  o=p.generate(input_ids=x[0],attention_mask=x[1],max_new_tokens=N,do_sample=False,**k)
  torch.cuda.synchronize();d=time.time()-z;print(f"{t} bs={x[0].shape[0]} N={N}: {d:.2f}s",flush=True);return d
S=dict(cache_implementation='static')
for bs in [128,64]:
  x=mk(bs);a=g('dyn',x,1);b=g('dyn',x,128);print(' dyn ms/step',1000*(b-a)/127)
  g('static compile',x,128,**S);a=g('static',x,1,**S);b=g('static',x,128,**S);print(' static ms/step',1000*(b-a)/127)
  a=g('static nocompile',x,1,disable_compile=True,**S);b=g('static nocompile',x,128,disable_compile=True,**S);print(' static-nocompile ms/step',1000*(b-a)/127)
print({k:v for k,v in K['inductor'].items() if 'cudagraph' in k},dict(K['stats']))
