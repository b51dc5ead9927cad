r"""Train and evaluate NRCH (cross-modal hashing under noisy labels).

With no flags: trains on the embedded synthetic data (small widths) on a CPU
and prints I->T / T->I mAP per evaluation and a final table.

  nhj-nrch                                                     # synthetic demo
  nhj-nrch --config=configs/nrch.py:mirflickr25k --config.data_dir=/data/mir \
      --config.bits=64 --config.noise_rate=0.5 --workdir=runs/nrch_mir64_n50

Re-running a command with the same --workdir resumes.
"""

from launch import cli

cli.define_flags("nrch")


def cli_main():
  cli.run_main(cli.trainer_main("nrch"))


if __name__ == "__main__":
  cli_main()
