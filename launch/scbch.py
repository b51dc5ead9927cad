r"""Train and evaluate SCBCH (cross-modal hashing under noisy labels).

With no flags: trains on the embedded synthetic data (small widths) in under
a minute on a CPU and prints I->T / T->I mAP per evaluation and a final table.

  nhj-scbch                                                    # synthetic demo
  nhj-scbch --config=configs/scbch.py:mirflickr25k --config.data_dir=/data/mir \
      --config.bits=64 --config.noise_rate=0.5 --workdir=runs/mir64_n50

Re-running a command with the same --workdir resumes.
"""

from launch import cli

cli.define_flags("scbch")


def cli_main():
  cli.run_main(cli.trainer_main("scbch"))


if __name__ == "__main__":
  cli_main()
