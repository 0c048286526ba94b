import torch,time
from transformers import Qwen3Config as QC,Qwen3ForCausalLM as QM
torch.manual_seed(0);torch.set_default_dtype(torch.bfloat16)
c=QC(vocab_size=151936,hidden_size=2560,intermediate_size=9728,num_hidden_layers=36,num_attention_heads=32,num_key_value_heads=8,head_dim=128,tie_word_embeddings=True,eos_token_id=None,pad_token_id=0)
with torch.device('cuda'):q=QM(c).eval()
for w in q.parameters():w.data.normal_(0,0.02)
def mk(bs,L=300):
  i=torch.randint(3,150000,(bs,L),device='cuda');a=torch.ones_like(i)
  for j in range(bs):a[j,:(j*37)%150]=0
  i[a==0]=0;return i,a
x=mk(64)
def g(t,N,**k):
  torch.cuda.synchronize();z=time.time()
  o=q.generate(input_ids=x[0],attention_mask=x[1],max_new_tokens=N,do_sample=False,cache_implementation='static',**k)
  torch.cuda.synchronize();d=time.time()-z;print(f"{t} N={N}: {d:.2f}s",flush=True);return o
def run(t):
  g(t+' compile',128);a=time.time();o1=g(t,1);b=time.time();o=g(t,129);e=time.time();print(' ms/step',1000*((e-b)-(b-a))/128,flush=True);return o
torch.backends.cuda.enable_cudnn_sdp(False)
o1=run('sdpa no-cudnn')
q.set_attn_implementation('eager');o2=run('eager attn')
print('match',(o1==o2).float().mean().item())
